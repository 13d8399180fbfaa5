//! TLS for Portico's hops, all on rustls (ring provider, TLS 1.2 and 1.3 only).
//!
//! - [`Reloading`]: a configuration built from PEM files and rebuilt when their contents
//!   change (Kubernetes swaps mounted Secrets under a running pod). A connection takes the
//!   configuration current at its handshake, so a rotation never drops an open connection; a
//!   new file that does not parse keeps the old configuration and logs an error.
//! - [`server`] (the edge's HTTPS, and gRPC servers that require a client certificate signed
//!   by the CA) and [`client`] (gRPC clients presenting this process's certificate).
//! - [`names_match`]: whether a peer certificate names one of the trusted peers.
//! - [`PeerKey`]: the short-lived credential the edge attaches when the hops are plaintext.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, PoisonError, RwLock,
    },
    time::Duration,
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
pub use rustls;
use rustls::{
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, ServerName},
    server::WebPkiClientVerifier,
    ClientConfig, RootCertStore, ServerConfig,
};
pub use tokio_rustls;
use tokio_util::sync::CancellationToken;

/// Default `TLS_RELOAD_INTERVAL`: how often certificate files are re-read.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// A TLS file or configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing, unreadable or not the PEM it should be.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The files do not make a configuration (e.g. the key does not match the certificate).
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn private_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| file_error(path, format!("not a PEM private key: {e}")))
}

fn roots(pem: &[u8], path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(pem, path)? {
        store
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(store)
}

/// This process's certificate (chain allowed) and private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A configuration built from files, rebuilt when they change.
pub struct Reloading<T> {
    inner: Arc<Inner<T>>,
}

type Build<T> = dyn Fn(&[Vec<u8>]) -> Result<T, TlsError> + Send + Sync;

struct Inner<T> {
    paths: Vec<PathBuf>,
    build: Box<Build<T>>,
    /// The file contents the current configuration was built from, and the configuration.
    state: RwLock<(Vec<Vec<u8>>, Arc<T>)>,
    generation: AtomicU64,
}

impl<T> Clone for Reloading<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("paths", &self.inner.paths)
            .field("generation", &self.inner.generation.load(Ordering::Relaxed))
            .finish()
    }
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, TlsError> {
    paths
        .iter()
        .map(|path| std::fs::read(path).map_err(|e| file_error(path, e.to_string())))
        .collect()
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Reads `paths` and builds the first configuration; an error here is a start-up error.
    pub fn new(
        paths: Vec<PathBuf>,
        build: impl Fn(&[Vec<u8>]) -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let contents = read_all(&paths)?;
        let first = build(&contents)?;
        Ok(Self {
            inner: Arc::new(Inner {
                paths,
                build: Box::new(build),
                state: RwLock::new((contents, Arc::new(first))),
                generation: AtomicU64::new(0),
            }),
        })
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<T> {
        Arc::clone(
            &self
                .inner
                .state
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .1,
        )
    }

    /// Bumped by every successful reload (clients rebuild their endpoints on a change).
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Re-reads the files: `Ok(true)` when they changed and the new configuration is in use,
    /// `Ok(false)` when nothing changed, an error (the old configuration stays) otherwise.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let contents = read_all(&self.inner.paths)?;
        if self
            .inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            == contents
        {
            return Ok(false);
        }
        let next = (self.inner.build)(&contents)?;
        *self
            .inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner) = (contents, Arc::new(next));
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }

    /// Re-reads the files every `interval` until `shutdown`; `what` names them in logs.
    pub fn spawn_watch(&self, what: &'static str, interval: Duration, shutdown: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                match this.reload() {
                    Ok(true) => tracing::info!(what, "TLS certificate files changed: reloaded"),
                    Ok(false) => {}
                    Err(error) => tracing::error!(
                        what,
                        %error,
                        "TLS certificate files changed but cannot be used; keeping the previous certificate"
                    ),
                }
            }
        });
    }
}

/// A server configuration with `identity`, offering `alpn` (e.g. `h2`, `http/1.1`); with
/// `client_ca`, every client must present a certificate that CA signed (mTLS).
pub fn server(
    identity: &Identity,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Reloading<ServerConfig>, TlsError> {
    let mut paths = vec![identity.cert.clone(), identity.key.clone()];
    paths.extend(client_ca.map(Path::to_path_buf));
    let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
    let built_paths = paths.clone();
    Reloading::new(paths, move |contents| {
        let chain = certificates(&contents[0], &built_paths[0])?;
        let key = private_key(&contents[1], &built_paths[1])?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match contents.get(2) {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(ca, &built_paths[2])?),
                    provider(),
                )
                .build()
                .map_err(|e| TlsError::Config(format!("client CA: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            TlsError::Config(format!(
                "{} and {} do not make a server identity: {e}",
                built_paths[0].display(),
                built_paths[1].display()
            ))
        })?;
        config.alpn_protocols.clone_from(&alpn);
        Ok(config)
    })
}

/// What a TLS client needs: the CA that signs servers and, for mTLS, this process's
/// certificate; both as PEM (tonic takes PEM) and as a rustls configuration.
#[derive(Debug)]
pub struct ClientMaterial {
    /// The CA certificates, PEM.
    pub ca_pem: Vec<u8>,
    /// This process's certificate chain and key, PEM, when it has one.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The same as a rustls configuration (ALPN `h2`).
    pub config: Arc<ClientConfig>,
}

/// A client configuration trusting `ca`, presenting `identity` when given.
pub fn client(
    ca: &Path,
    identity: Option<&Identity>,
) -> Result<Reloading<ClientMaterial>, TlsError> {
    let mut paths = vec![ca.to_path_buf()];
    if let Some(identity) = identity {
        paths.extend([identity.cert.clone(), identity.key.clone()]);
    }
    let built_paths = paths.clone();
    Reloading::new(paths, move |contents| {
        let roots = roots(&contents[0], &built_paths[0])?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots);
        let (mut config, identity_pem) = match (contents.get(1), contents.get(2)) {
            (Some(cert), Some(key)) => {
                let chain = certificates(cert, &built_paths[1])?;
                let private = private_key(key, &built_paths[2])?;
                let config = builder.with_client_auth_cert(chain, private).map_err(|e| {
                    TlsError::Config(format!(
                        "{} and {} do not make a client identity: {e}",
                        built_paths[1].display(),
                        built_paths[2].display()
                    ))
                })?;
                (config, Some((cert.clone(), key.clone())))
            }
            _ => (builder.with_no_client_auth(), None),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ClientMaterial {
            ca_pem: contents[0].clone(),
            identity_pem,
            config: Arc::new(config),
        })
    })
}

/// A client configuration for a store (Redis): `ca` when given, else the system's roots.
pub fn store_client(ca: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let roots = match ca {
        Some(path) => roots(
            &std::fs::read(path).map_err(|e| file_error(path, e.to_string()))?,
            path,
        )?,
        None => system_roots(),
    };
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The system's CA bundle (Debian's `/etc/ssl/certs/ca-certificates.crt` and its peers).
fn system_roots() -> RootCertStore {
    let mut store = RootCertStore::empty();
    for path in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ] {
        let Ok(pem) = std::fs::read(path) else {
            continue;
        };
        for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
            let _ = store.add(cert);
        }
        if !store.is_empty() {
            break;
        }
    }
    store
}

/// Whether `cert` (an already verified peer certificate) is valid for one of `names`, as a
/// server certificate would be for a host name: DNS SANs, wildcards included.
pub fn names_match(cert: &CertificateDer<'_>, names: &[String]) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    names.iter().any(|name| {
        ServerName::try_from(name.as_str())
            .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
    })
}

/// The header the edge's signed peer credential travels in.
pub const PEER_HEADER: &str = "x-portico-peer";

/// How long a peer credential is valid either side of its timestamp.
const PEER_CREDENTIAL_LIFETIME_SECS: u64 = 30;

/// The key of plaintext deployments' peer credentials (`GRPC_PEER_KEY`, or a random one that
/// never leaves the process under `portico serve`). The edge signs the client IP it forwards
/// with a timestamp; a service believes that IP only when the signature verifies.
#[derive(Clone)]
pub struct PeerKey(ring::hmac::Key);

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerKey(…)")
    }
}

impl PeerKey {
    /// A key from a shared secret.
    pub fn new(secret: &[u8]) -> Self {
        Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    /// A key from 32 random bytes.
    pub fn random() -> Result<Self, TlsError> {
        let rng = ring::rand::SystemRandom::new();
        ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .map(Self)
            .map_err(|_| TlsError::Config("no randomness for the peer key".into()))
    }

    fn message(unix_secs: u64, forwarded_for: &str) -> String {
        format!("portico-peer-v1|{unix_secs}|{forwarded_for}")
    }

    /// The credential for a call at `unix_secs` forwarding `forwarded_for`.
    pub fn sign(&self, unix_secs: u64, forwarded_for: &str) -> String {
        let tag = ring::hmac::sign(&self.0, Self::message(unix_secs, forwarded_for).as_bytes());
        format!("v1.{unix_secs}.{}", B64.encode(tag.as_ref()))
    }

    /// The credential for a call made now forwarding `forwarded_for`.
    pub fn sign_now(&self, forwarded_for: &str) -> String {
        self.sign(unix_now(), forwarded_for)
    }

    /// Whether `credential` was signed with this key for `forwarded_for`, within the lifetime
    /// of now.
    pub fn verify_now(&self, credential: &str, forwarded_for: &str) -> bool {
        self.verify(credential, unix_now(), forwarded_for)
    }

    /// Whether `credential` was signed with this key for `forwarded_for`, recently.
    pub fn verify(&self, credential: &str, unix_secs: u64, forwarded_for: &str) -> bool {
        let mut parts = credential.splitn(3, '.');
        let (Some("v1"), Some(at), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let (Ok(at), Ok(tag)) = (at.parse::<u64>(), B64.decode(tag)) else {
            return false;
        };
        at.abs_diff(unix_secs) <= PEER_CREDENTIAL_LIFETIME_SECS
            && ring::hmac::verify(&self.0, Self::message(at, forwarded_for).as_bytes(), &tag)
                .is_ok()
    }
}

/// Seconds since the Unix epoch (0 on a clock before it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
