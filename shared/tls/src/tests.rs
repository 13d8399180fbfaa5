use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn new_ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().expect("key");
    Ca {
        cert: params.self_signed(&key).expect("ca"),
        key,
    }
}

/// (cert PEM, key PEM) for `names`, signed by `ca`.
fn leaf(ca: &Ca, names: &[&str]) -> (String, String) {
    let params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        .expect("params");
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("leaf");
    (cert.pem(), key.serialize_pem())
}

fn dir() -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("portico-tls-{}", std::process::id()))
        .join(format!("{:x}", rand_suffix()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

fn rand_suffix() -> u64 {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("rng");
    u64::from_le_bytes(bytes)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// The subject names of the certificate a TLS client sees at `addr`.
async fn served_names(
    acceptor: &Reloading<ServerConfig>,
    client: Arc<ClientConfig>,
) -> Result<Vec<u8>, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = acceptor.current();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut tls = tokio_rustls::TlsConnector::from(client)
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    tls.read_to_end(&mut got).await.map_err(|e| e.to_string())?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or("no peer certificate")?;
    server.await.expect("server task")?;
    Ok(leaf.to_vec())
}

#[tokio::test]
async fn a_rotated_certificate_is_served_and_a_broken_one_keeps_the_old() {
    let ca = new_ca();
    let dir = dir();
    let ca_path = write(&dir, "ca.pem", &ca.cert.pem());
    let (cert, key) = leaf(&ca, &["localhost"]);
    let identity = Identity {
        cert: write(&dir, "tls.crt", &cert),
        key: write(&dir, "tls.key", &key),
    };
    let acceptor = server(&identity, None, &[b"h2"]).expect("server config");
    let client = client(&ca_path, None)
        .expect("client")
        .current()
        .config
        .clone();
    let first = served_names(&acceptor, client.clone())
        .await
        .expect("handshake");
    assert!(!acceptor.reload().expect("unchanged"));

    let (cert2, key2) = leaf(&ca, &["localhost"]);
    write(&dir, "tls.crt", &cert2);
    write(&dir, "tls.key", &key2);
    assert!(acceptor.reload().expect("rotated"));
    assert_eq!(acceptor.generation(), 1);
    let second = served_names(&acceptor, client.clone())
        .await
        .expect("handshake");
    assert_ne!(first, second, "the new certificate is served");

    write(&dir, "tls.crt", "not a certificate");
    assert!(acceptor.reload().is_err(), "a broken file is reported");
    assert_eq!(acceptor.generation(), 1);
    let third = served_names(&acceptor, client).await.expect("handshake");
    assert_eq!(second, third, "the previous certificate is kept");
}

#[tokio::test]
async fn mtls_servers_refuse_clients_without_a_certificate_of_the_ca() {
    let ca = new_ca();
    let other = new_ca();
    let dir = dir();
    let ca_path = write(&dir, "ca.pem", &ca.cert.pem());
    let (cert, key) = leaf(&ca, &["localhost"]);
    let identity = Identity {
        cert: write(&dir, "server.crt", &cert),
        key: write(&dir, "server.key", &key),
    };
    let acceptor = server(&identity, Some(&ca_path), &[b"h2"]).expect("server");

    let anonymous = client(&ca_path, None)
        .expect("client")
        .current()
        .config
        .clone();
    assert!(served_names(&acceptor, anonymous).await.is_err());

    let (stranger_cert, stranger_key) = leaf(&other, &["portico-edge"]);
    let stranger = Identity {
        cert: write(&dir, "stranger.crt", &stranger_cert),
        key: write(&dir, "stranger.key", &stranger_key),
    };
    let untrusted = client(&ca_path, Some(&stranger))
        .expect("client")
        .current()
        .config
        .clone();
    assert!(served_names(&acceptor, untrusted).await.is_err());

    let (edge_cert, edge_key) = leaf(&ca, &["portico-edge"]);
    let edge = Identity {
        cert: write(&dir, "edge.crt", &edge_cert),
        key: write(&dir, "edge.key", &edge_key),
    };
    let trusted = client(&ca_path, Some(&edge))
        .expect("client")
        .current()
        .config
        .clone();
    served_names(&acceptor, trusted)
        .await
        .expect("a certificate of the CA is accepted");
}

#[test]
fn peer_names_come_from_the_certificate() {
    let ca = new_ca();
    let (edge, _) = leaf(&ca, &["portico-edge", "edge.portico.svc"]);
    let der = CertificateDer::from_pem_slice(edge.as_bytes()).expect("der");
    assert!(names_match(&der, &["portico-edge".into()]));
    assert!(names_match(
        &der,
        &["other".into(), "edge.portico.svc".into()]
    ));
    assert!(!names_match(&der, &["portico-auth".into()]));
}

#[test]
fn peer_credentials_verify_only_for_their_ip_and_time() {
    let key = PeerKey::random().expect("key");
    let credential = key.sign(1_000, "203.0.113.9");
    assert!(key.verify(&credential, 1_010, "203.0.113.9"));
    assert!(
        !key.verify(&credential, 1_010, "203.0.113.10"),
        "another IP"
    );
    assert!(!key.verify(&credential, 1_100, "203.0.113.9"), "expired");
    assert!(!PeerKey::random()
        .expect("key")
        .verify(&credential, 1_010, "203.0.113.9"));
    assert!(!key.verify("v1.1000.AAAA", 1_000, "203.0.113.9"));
    assert!(!key.verify("garbage", 1_000, "203.0.113.9"));
}
