//! Transport security with real certificates made at test time (rcgen): HTTPS and h2 at the
//! edge, mTLS between the edge and every service, certificate rotation, the three direct
//! attacks of the review (lockout bypass, spending another client's bucket, anonymous chat)
//! from callers that are not the edge, `rediss://` against a real `redis-server --tls-port`,
//! and PostgreSQL with `sslmode=verify-full`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use portico::Component;
use portico_proto::{
    auth::{auth_service_client::AuthServiceClient, LoginRequest, RegisterRequest},
    chat::{chat_service_client::ChatServiceClient, CompleteRequest},
    ratelimit::{rate_limit_service_client::RateLimitServiceClient, CheckRequest},
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tonic::{
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Code,
};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::harness::TestSuite;

const PASSWORD: &str = "correct horse battery";
const NOTICE: Duration = Duration::from_secs(15);

/// A CA of this test's own, and a directory for the files it signs.
struct Pki {
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: PathBuf,
}

/// A certificate and key written as PEM files.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
}

impl Issued {
    fn pem(&self) -> (String, String) {
        (
            std::fs::read_to_string(&self.cert).expect("cert"),
            std::fs::read_to_string(&self.key).expect("key"),
        )
    }
}

impl Pki {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("portico-pki-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("ca");
        std::fs::write(dir.join("ca.pem"), cert.pem()).expect("write ca");
        Self { cert, key, dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn ca_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses) under `file`.
    fn issue(&self, file: &str, names: &[&str]) -> Issued {
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        let issued = Issued {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("write cert");
        std::fs::write(&issued.key, key.serialize_pem()).expect("write key");
        issued
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// An HTTPS client trusting `pki`'s CA.
fn https_client(pki: &Pki) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).expect("ca"))
        .build()
        .expect("client")
}

/// The leaf certificate presented to a new connection at `addr`, verified as `name`, with the
/// client certificate `identity` when given (an mTLS port).
async fn presented_certificate(
    addr: std::net::SocketAddr,
    pki: &Pki,
    name: &'static str,
    identity: Option<&Issued>,
) -> Vec<u8> {
    let identity = identity.map(|issued| portico_tls::Identity {
        cert: issued.cert.clone(),
        key: issued.key.clone(),
    });
    let material = portico_tls::client(&pki.ca(), identity.as_ref())
        .expect("client tls")
        .current();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let tls = portico_tls::tokio_rustls::TlsConnector::from(Arc::clone(&material.config))
        .connect(
            portico_tls::rustls::pki_types::ServerName::try_from(name).expect("name"),
            tcp,
        )
        .await
        .expect("handshake");
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .expect("a certificate")
        .to_vec()
}

#[tokio::test]
async fn the_edge_serves_https_and_h2_over_tls_and_picks_up_a_rotated_certificate() {
    let pki = Pki::new();
    let edge = pki.issue("edge", &["localhost", "127.0.0.1"]);
    let suite = TestSuite::builder()
        .env("EDGE_TLS_CERT_FILE", path(&edge.cert))
        .env("EDGE_TLS_KEY_FILE", path(&edge.key))
        .env("TLS_RELOAD_INTERVAL", "100ms")
        .spawn()
        .await;
    let url = format!("https://localhost:{}/healthz", suite.edge_addr.port());

    // HTTP/1.1 over TLS, with a client that trusts the CA.
    let client = https_client(&pki);
    let answer = client.get(&url).send().await.expect("https");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.version(), reqwest::Version::HTTP_11);
    // Plaintext to the HTTPS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/healthz",
            suite.edge_addr.port()
        ))
        .send()
        .await;
    assert!(plain.is_err(), "no plaintext on the HTTPS port: {plain:?}");

    // HTTP/2 negotiated by ALPN.
    let material = portico_tls::client(&pki.ca(), None)
        .expect("client tls")
        .current();
    let tcp = tokio::net::TcpStream::connect(suite.edge_addr)
        .await
        .expect("connect");
    let tls = portico_tls::tokio_rustls::TlsConnector::from(Arc::clone(&material.config))
        .connect(
            portico_tls::rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    let request = || {
        http::Request::get(&url)
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    let response = h2.send_request(request()).await.expect("h2 request");
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.expect("body");

    // Rotation: new connections get the new certificate, the open one keeps working.
    let before = presented_certificate(suite.edge_addr, &pki, "localhost", None).await;
    let rotated = pki.issue("edge-next", &["localhost", "127.0.0.1"]);
    std::fs::copy(&rotated.key, &edge.key).expect("rotate key");
    std::fs::copy(&rotated.cert, &edge.cert).expect("rotate cert");
    let deadline = Instant::now() + NOTICE;
    while presented_certificate(suite.edge_addr, &pki, "localhost", None).await == before {
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = h2
        .send_request(request())
        .await
        .expect("the open connection survives");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn production_refuses_a_plaintext_edge_unless_told_it_is_behind_tls() {
    let production = [
        ("APP_ENV", "production"),
        ("EDGE_ADDR", "127.0.0.1:0"),
        ("CORS_ORIGINS", "https://app.example.com"),
        ("METRICS_GUARD", "secret"),
        (
            "METRICS_GUARD_SECRET",
            "metrics-secret-0123456789abcdef0123",
        ),
    ];
    let source = |extra: &[(&str, &str)]| {
        production
            .iter()
            .chain(extra)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<std::collections::HashMap<_, _>>()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let settings = portico_config::Settings::from_source(&source(&[])).expect("settings");
    let refused = portico_edge::serve(&settings, listener, Default::default())
        .await
        .expect_err("no plaintext edge in production");
    let message = refused.to_string();
    assert!(
        message.contains("EDGE_TLS_CERT_FILE") && message.contains("EDGE_TLS=off"),
        "{message}"
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let settings =
        portico_config::Settings::from_source(&source(&[("EDGE_TLS", "off")])).expect("settings");
    let stop = tokio_util::sync::CancellationToken::new();
    let edge = portico_edge::serve(&settings, listener, stop.clone())
        .await
        .expect("EDGE_TLS=off is an explicit choice");
    assert!(edge.shutdown(Duration::from_secs(5)).await);
}

/// A suite whose hops are all mTLS: one certificate for every component (as server, and as the
/// edge's client identity), services on `https://`, health also on a plaintext port.
async fn mtls_suite(pki: &Pki, identity: &Issued) -> TestSuite {
    TestSuite::builder()
        .env("GRPC_TLS_CA_FILE", path(&pki.ca()))
        .env("GRPC_TLS_CERT_FILE", path(&identity.cert))
        .env("GRPC_TLS_KEY_FILE", path(&identity.key))
        .env("GRPC_PEER_KEY", "")
        .env("AUTH_HEALTH_ADDR", "127.0.0.1:0")
        .env("AUTH_LOGIN_MAX_ATTEMPTS", "5")
        .env("RATE_LIMIT_GLOBAL_MAX", "50")
        .env("CHAT_ALLOW_ANONYMOUS", "true")
        .spawn()
        .await
}

/// A gRPC channel to `addr` over TLS, presenting `identity` when given.
async fn tls_channel(
    addr: std::net::SocketAddr,
    pki_ca: &str,
    identity: Option<&Issued>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki_ca))
        .domain_name("127.0.0.1");
    if let Some(identity) = identity {
        let (cert, key) = identity.pem();
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await
}

/// Registers `email`, then sends wrong passwords each "forwarded for" another address (and
/// `credential` as the edge's, when given) straight to auth: true when the caller is locked out
/// within ten, i.e. the forged addresses were not believed.
async fn forged_forwarding_is_locked_out(
    auth: &mut AuthServiceClient<Channel>,
    email: &str,
    credential: Option<&str>,
) -> bool {
    auth.register(RegisterRequest {
        email: email.into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("register");
    for n in 0..10 {
        let mut request = tonic::Request::new(LoginRequest {
            email: email.into(),
            password: "wrong password".into(),
        });
        let metadata = request.metadata_mut();
        metadata.insert(
            "x-forwarded-for",
            format!("198.51.100.{n}").parse().expect("ascii"),
        );
        if let Some(credential) = credential {
            metadata.insert(portico_tls::PEER_HEADER, credential.parse().expect("ascii"));
        }
        if auth.login(request).await.expect_err("wrong").code() == Code::ResourceExhausted {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn every_hop_runs_over_mtls_and_outsiders_are_refused_or_unprivileged() {
    let pki = Pki::new();
    let suite_identity = pki.issue("suite", &["portico-edge", "localhost", "127.0.0.1"]);
    let suite = mtls_suite(&pki, &suite_identity).await;

    // Through the edge, every service answers over mTLS.
    let ready: Value = suite.get("/readyz").await.json().await.expect("json");
    assert_eq!(ready["status"], "ok", "{ready}");
    let token = suite.login("mia@example.com").await;
    let me = suite
        .http
        .get(suite.url("/api/v1/auth/me"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("me");
    assert_eq!(me.status(), StatusCode::OK);
    let chat = suite
        .post(
            "/v1/chat/completions",
            json!({"model": "echo", "messages": [{"role": "user", "content": "hello there"}]}),
        )
        .await;
    assert_eq!(chat.status(), StatusCode::OK, "{:?}", chat.text().await);

    let auth_addr = suite.service_addr(Component::Auth);
    // No client certificate, or one another CA signed: no RPC gets through.
    let stranger_pki = Pki::new();
    let stranger = stranger_pki.issue("stranger", &["portico-edge"]);
    for identity in [None, Some(&stranger)] {
        let refused = match tls_channel(auth_addr, &pki.ca_pem(), identity).await {
            Err(_) => true,
            Ok(channel) => HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .is_err(),
        };
        assert!(
            refused,
            "a client without a certificate of the CA is refused"
        );
    }
    // Plaintext to an mTLS port: refused too.
    let plaintext = Endpoint::from_shared(format!("http://{auth_addr}"))
        .expect("url")
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        assert!(HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .is_err());
    }

    // A certificate of the CA that does not name the edge: served, but as itself.
    let insider = pki.issue("insider", &["portico-reporting"]);
    let channel = tls_channel(auth_addr, &pki.ca_pem(), Some(&insider))
        .await
        .expect("a certificate of the CA connects");
    let mut auth = AuthServiceClient::new(channel.clone());
    // Attack 1: wrong passwords "from" random addresses all count against the socket peer.
    assert!(
        forged_forwarding_is_locked_out(&mut auth, "victim@example.com", None).await,
        "a forged x-forwarded-for does not escape the lockout"
    );

    // Attack 2: spending another client's bucket.
    let ratelimit_addr = suite.service_addr(Component::RateLimit);
    let mut ratelimit = RateLimitServiceClient::new(
        tls_channel(ratelimit_addr, &pki.ca_pem(), Some(&insider))
            .await
            .expect("connects"),
    );
    let spend = ratelimit
        .check(CheckRequest {
            key: "203.0.113.7".into(),
            policy: "global".into(),
            cost: 100,
            client_ip: "203.0.113.7".into(),
            ..Default::default()
        })
        .await
        .expect_err("only the edge spends buckets");
    assert_eq!(spend.code(), Code::Unauthenticated, "{spend:?}");

    // Attack 3: completions without credentials (refused before the request is even read).
    let chat_addr = suite.service_addr(Component::Chat);
    let mut chat = ChatServiceClient::new(
        tls_channel(chat_addr, &pki.ca_pem(), Some(&insider))
            .await
            .expect("connects"),
    );
    let anonymous = chat
        .complete(CompleteRequest::default())
        .await
        .expect_err("no credentials, not the edge");
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");

    // The edge's own identity is privileged: the same empty request is judged on its merits.
    let mut as_edge = ChatServiceClient::new(
        tls_channel(chat_addr, &pki.ca_pem(), Some(&suite_identity))
            .await
            .expect("connects"),
    );
    let invalid = as_edge
        .complete(CompleteRequest::default())
        .await
        .expect_err("empty");
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");
}

#[tokio::test]
async fn kubelet_probes_reach_health_on_the_plaintext_port_of_an_mtls_service() {
    let pki = Pki::new();
    let identity = pki.issue("suite", &["portico-edge", "localhost", "127.0.0.1"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let health_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        probe.local_addr().expect("addr")
    };
    let database = crate::harness::fresh_database().await;
    let vars: std::collections::HashMap<String, String> = [
        ("DATABASE_URL", database.as_str()),
        ("GRPC_TLS_CA_FILE", path(&pki.ca())),
        ("GRPC_TLS_CERT_FILE", path(&identity.cert)),
        ("GRPC_TLS_KEY_FILE", path(&identity.key)),
        ("AUTH_GRPC_URL", "https://127.0.0.1:1"),
        ("CONTENT_HEALTH_ADDR", &health_addr.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let settings = portico_config::Settings::from_source(&vars).expect("settings");
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = portico_content::serve(&settings, listener, stop.clone())
        .await
        .expect("content over mTLS");
    let channel = Endpoint::from_shared(format!("http://{health_addr}"))
        .expect("url")
        .connect()
        .await
        .expect("plaintext health port");
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: portico_proto::names::CONTENT.into(),
        })
        .await
        .expect("health over plaintext")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    assert!(handle.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn https_urls_without_tls_material_and_plaintext_urls_with_it_are_start_up_errors() {
    let vars = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<std::collections::HashMap<_, _>>()
    };
    let problems =
        portico_config::Settings::from_source(&vars(&[("AUTH_GRPC_URL", "https://auth:50051")]))
            .expect_err("https without a CA")
            .to_string();
    assert!(problems.contains("AUTH_GRPC_URL"), "{problems}");

    let pki = Pki::new();
    let identity = pki.issue("suite", &["portico-edge"]);
    let problems = portico_config::Settings::from_source(&vars(&[
        ("GRPC_TLS_CA_FILE", path(&pki.ca())),
        ("GRPC_TLS_CERT_FILE", path(&identity.cert)),
        ("GRPC_TLS_KEY_FILE", path(&identity.key)),
        ("CONTENT_GRPC_URL", "http://content:50052"),
    ]))
    .expect_err("plaintext URLs while TLS is configured")
    .to_string();
    assert!(
        problems.contains("CONTENT_GRPC_URL") && problems.contains("https://"),
        "{problems}"
    );
}

#[tokio::test]
async fn on_plaintext_hops_only_the_edge_may_speak_for_a_client() {
    // `portico serve` without certificates: the edge signs with a key of the process; a local
    // program calling a service port directly is treated as itself.
    let suite = TestSuite::builder()
        .env("AUTH_LOGIN_MAX_ATTEMPTS", "5")
        .env("CHAT_ALLOW_ANONYMOUS", "true")
        .spawn()
        .await;
    let chat = suite
        .post(
            "/v1/chat/completions",
            json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(
        chat.status(),
        StatusCode::OK,
        "anonymous chat through the edge"
    );

    let mut auth = AuthServiceClient::new(suite.channel(Component::Auth).await);
    // A forged credential is no better than none.
    assert!(
        forged_forwarding_is_locked_out(&mut auth, "nora@example.com", Some("v1.0.AAAA")).await,
        "forged forwarding does not escape the lockout"
    );

    let spend = RateLimitServiceClient::new(suite.channel(Component::RateLimit).await)
        .check(CheckRequest {
            key: "203.0.113.7".into(),
            policy: "global".into(),
            cost: 100,
            client_ip: "203.0.113.7".into(),
            ..Default::default()
        })
        .await
        .expect_err("only the edge spends buckets");
    assert_eq!(spend.code(), Code::Unauthenticated);
    let anonymous = ChatServiceClient::new(suite.channel(Component::Chat).await)
        .complete(CompleteRequest::default())
        .await
        .expect_err("not the edge");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

/// A `redis-server` serving TLS only (port 0 for plaintext), with `pki`'s certificate.
struct TlsRedis {
    port: u16,
    plain_port: u16,
    child: std::process::Child,
}

impl TlsRedis {
    async fn start(pki: &Pki) -> Self {
        let server = pki.issue("redis", &["localhost", "127.0.0.1"]);
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .expect("free port")
                .local_addr()
                .expect("addr")
                .port()
        };
        let (port, plain_port) = (free(), free());
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &plain_port.to_string(),
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--tls-cert-file",
                path(&server.cert),
                "--tls-key-file",
                path(&server.key),
                "--tls-ca-cert-file",
                path(&pki.ca()),
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian's has TLS)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "redis-server (TLS) did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            port,
            plain_port,
            child,
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Readiness's view of Redis after it had time to connect: `ok`, or `degraded`.
async fn cache_settles(suite: &TestSuite, wanted: &str) {
    let deadline = Instant::now() + NOTICE;
    loop {
        let ready: Value = suite.get("/readyz").await.json().await.expect("json");
        if ready["checks"]["cache"]["status"] == wanted {
            return;
        }
        assert!(Instant::now() < deadline, "cache never {wanted}: {ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn rediss_works_with_the_ca_and_fails_clearly_without_it_or_on_a_plaintext_port() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki).await;
    let good = TestSuite::builder()
        .env("REDIS_URL", &format!("rediss://localhost:{}", redis.port))
        .env("REDIS_TLS_CA_FILE", path(&pki.ca()))
        .spawn()
        .await;
    cache_settles(&good, "ok").await;

    // A CA that did not sign the server's certificate: never connected, never plaintext.
    let other = Pki::new();
    let wrong_ca = TestSuite::builder()
        .env("REDIS_URL", &format!("rediss://localhost:{}", redis.port))
        .env("REDIS_TLS_CA_FILE", path(&other.ca()))
        .spawn()
        .await;
    cache_settles(&wrong_ca, "degraded").await;

    // rediss:// to the plaintext port: the handshake fails, nothing is sent in the clear.
    let plaintext = TestSuite::builder()
        .env(
            "REDIS_URL",
            &format!("rediss://localhost:{}", redis.plain_port),
        )
        .env("REDIS_TLS_CA_FILE", path(&pki.ca()))
        .spawn()
        .await;
    cache_settles(&plaintext, "degraded").await;
}

#[tokio::test]
async fn postgres_with_verify_full_works_and_a_wrong_ca_fails_clearly() {
    // The machine's PostgreSQL runs with ssl=on and Debian's certificate for `localhost`.
    let Some(admin_url) = std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
    else {
        eprintln!("skipped: needs TEST_DATABASE_URL (PostgreSQL with ssl=on)");
        return;
    };
    let database = crate::harness::fresh_database().await;
    let name = database
        .rsplit('/')
        .next()
        .expect("db name")
        .split('?')
        .next()
        .expect("name");
    let user = admin_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map_or("postgres", |(user, _)| user);
    // The server's own certificate is its trust anchor here (Debian's, for `localhost`);
    // `TEST_PG_SSLROOTCERT` names another.
    let server_cert = std::env::var("TEST_PG_SSLROOTCERT")
        .unwrap_or_else(|_| "/etc/ssl/certs/ssl-cert-snakeoil.pem".to_owned());
    if !Path::new(&server_cert).is_file() {
        eprintln!("skipped: no server certificate at {server_cert} (set TEST_PG_SSLROOTCERT)");
        return;
    }
    let url = format!(
        "postgres://{user}@localhost:5432/{name}?sslmode=verify-full&sslrootcert={server_cert}"
    );
    let db = portico_migrations::connect(&url, None, Duration::from_secs(5))
        .await
        .expect("verify-full with the server's CA");
    let db = portico_migrations::Db::new(db);
    let row = db
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            vec![],
        )
        .await
        .expect("query")
        .expect("a row");
    assert!(
        row.try_get::<bool>("", "ssl").expect("ssl column"),
        "the connection is TLS"
    );

    let pki = Pki::new();
    let wrong = format!(
        "postgres://{user}@localhost:5432/{name}?sslmode=verify-full&sslrootcert={}",
        path(&pki.ca())
    );
    let refused = portico_migrations::connect(&wrong, None, Duration::from_secs(5))
        .await
        .expect_err("a CA that did not sign the server's certificate");
    let message = refused.to_string();
    assert!(
        message.to_lowercase().contains("certificate") || message.contains("tls"),
        "{message}"
    );

    let problems = portico_config::Settings::from_source(
        &[(
            "DATABASE_URL".to_owned(),
            format!("postgres://{user}@localhost/{name}?sslmode=verify-everything"),
        )]
        .into_iter()
        .collect::<std::collections::HashMap<_, _>>(),
    )
    .expect_err("an unknown sslmode")
    .to_string();
    assert!(
        problems.contains("DATABASE_URL") && problems.contains("sslmode"),
        "{problems}"
    );
}

#[tokio::test]
async fn rotated_grpc_certificates_are_picked_up_with_no_failed_request() {
    let pki = Pki::new();
    let identity = pki.issue("suite", &["portico-edge", "localhost", "127.0.0.1"]);
    let suite = TestSuite::builder()
        .env("GRPC_TLS_CA_FILE", path(&pki.ca()))
        .env("GRPC_TLS_CERT_FILE", path(&identity.cert))
        .env("GRPC_TLS_KEY_FILE", path(&identity.key))
        .env("TLS_RELOAD_INTERVAL", "100ms")
        .env("RATE_LIMIT_GLOBAL_MAX", "1000000")
        .spawn()
        .await;
    let token = suite.login("otto@example.com").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let outcomes = Arc::new(std::sync::Mutex::new((0u32, Vec::<String>::new())));
    let traffic = {
        let (http, url) = (suite.http.clone(), suite.url("/api/v1/auth/me"));
        let (stop, outcomes) = (Arc::clone(&stop), Arc::clone(&outcomes));
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = http.get(&url).bearer_auth(&token).send().await;
                let mut outcomes = outcomes.lock().expect("lock");
                match answer {
                    Ok(r) if r.status() == StatusCode::OK => outcomes.0 += 1,
                    Ok(r) => outcomes.1.push(r.status().to_string()),
                    Err(e) => outcomes.1.push(e.to_string()),
                }
            }
        })
    };
    let auth = suite.service_addr(Component::Auth);
    let before = presented_certificate(auth, &pki, "127.0.0.1", Some(&identity)).await;
    // Key first, then certificate: a reload in between sees a pair that does not match and
    // keeps the old one, as a half-written Secret would.
    let next = pki.issue("suite-next", &["portico-edge", "localhost", "127.0.0.1"]);
    std::fs::copy(&next.key, &identity.key).expect("rotate key");
    std::fs::copy(&next.cert, &identity.cert).expect("rotate cert");
    let deadline = Instant::now() + NOTICE;
    while presented_certificate(auth, &pki, "127.0.0.1", Some(&identity)).await == before {
        assert!(
            Instant::now() < deadline,
            "the service never served the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Keep the traffic going until the edge has had time to rebuild its endpoints with the
    // new client certificate (it looks every second) and served requests through them.
    let served_at_rotation = outcomes.lock().expect("lock").0;
    let deadline = Instant::now() + NOTICE;
    while outcomes.lock().expect("lock").0 < served_at_rotation + 300 {
        assert!(
            Instant::now() < deadline,
            "traffic stalled after the rotation: {:?}",
            outcomes.lock().expect("lock").1.first()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.await.expect("traffic task");
    let (ok, failed) = outcomes.lock().expect("lock").clone();
    assert!(ok > 300, "{ok} requests served");
    assert!(failed.is_empty(), "failed during the rotation: {failed:?}");
}
