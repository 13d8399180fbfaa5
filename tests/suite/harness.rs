//! `TestSuite::spawn()`: the whole suite in-process on port 0, each test with its own database
//! and Redis key prefix. Embedded defaults (SQLite file + in-memory) unless `TEST_DATABASE_URL`
//! / `TEST_REDIS_URL` point at real servers; with `TEST_REQUIRE_EXTERNAL=1` a server that is
//! set but unreachable fails the test instead of falling back (CI runs every combination of
//! the two, so a back-end path no test touches cannot hide).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use portico::{Component, Suite};
use portico_config::Settings;
use sea_orm::{ConnectionTrait as _, Database};
use tonic::transport::Channel;

/// One running suite and what a test needs to drive it.
pub struct TestSuite {
    /// `http://127.0.0.1:<port>` of the edge.
    pub base_url: String,
    /// Edge address.
    pub edge_addr: SocketAddr,
    /// A client with no default headers.
    pub http: reqwest::Client,
    /// The database this suite uses.
    pub database_url: String,
    /// Redis URL when running against Redis.
    pub redis_url: Option<String>,
    /// The JWT signing key file (PEM) of this suite's auth service.
    pub signing_key: String,
    suite: Option<Suite>,
}

/// Extra environment for one suite.
#[derive(Default)]
pub struct Builder {
    vars: HashMap<String, String>,
    auth: portico_auth::Options,
}

impl Builder {
    /// The auth service's injected parts (a capturing mailer, a manual clock).
    pub fn auth_options(mut self, options: portico_auth::Options) -> Self {
        self.auth = options;
        self
    }

    /// Sets a variable for this suite only.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.vars.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Boots the suite.
    pub async fn spawn(self) -> TestSuite {
        init_logs();
        let database_url = test_database().await;
        let redis_url = test_redis().await;
        let key_prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
        let mut vars: HashMap<String, String> = [
            ("APP_ENV", "test"),
            ("EDGE_ADDR", "127.0.0.1:0"),
            ("AUTH_ADDR", "127.0.0.1:0"),
            ("CONTENT_ADDR", "127.0.0.1:0"),
            ("CHAT_ADDR", "127.0.0.1:0"),
            ("RATELIMIT_ADDR", "127.0.0.1:0"),
            ("SHUTDOWN_TIMEOUT", "5s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        vars.insert("DATABASE_URL".into(), database_url.clone());
        // A known key instead of `portico serve`'s random one, so a test can play the edge.
        vars.insert("GRPC_PEER_KEY".into(), TEST_PEER_KEY.into());
        vars.insert("REDIS_KEY_PREFIX".into(), key_prefix.clone());
        vars.insert("JWT_SIGNING_KEY_FILE".into(), new_signing_key());
        if let Some(url) = &redis_url {
            vars.insert("REDIS_URL".into(), url.clone());
        }
        vars.extend(self.vars);
        let signing_key = vars["JWT_SIGNING_KEY_FILE"].clone();
        let settings = Settings::from_source(&vars).expect("test settings are valid");
        let suite = Suite::start_with(settings, self.auth)
            .await
            .expect("suite starts");
        let edge_addr = suite.edge_addr;
        TestSuite {
            base_url: format!("http://{edge_addr}"),
            edge_addr,
            http: reqwest::Client::new(),
            database_url,
            redis_url,
            signing_key,
            suite: Some(suite),
        }
    }
}

impl TestSuite {
    /// A suite on the default test configuration.
    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    /// A suite with extra variables.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// POSTs `body` as JSON to `path`.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("edge answers")
    }

    /// `base_url` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// GET `path` at the edge.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("edge answers")
    }

    /// The edge's OpenAPI document (`/api/openapi.json`).
    pub async fn openapi(&self) -> serde_json::Value {
        self.get("/api/openapi.json")
            .await
            .json()
            .await
            .expect("the OpenAPI document is JSON")
    }

    /// The running suite.
    pub fn suite(&mut self) -> &mut Suite {
        self.suite.as_mut().expect("suite is running")
    }

    /// Address of one service.
    pub fn service_addr(&self, component: Component) -> SocketAddr {
        self.suite
            .as_ref()
            .and_then(|s| s.service_addr(component))
            .expect("service is running")
    }

    /// A gRPC channel to one service.
    pub async fn channel(&self, component: Component) -> Channel {
        Channel::from_shared(format!("http://{}", self.service_addr(component)))
            .expect("valid URL")
            .connect()
            .await
            .expect("service accepts connections")
    }

    /// Registers `email` (password "correct horse battery") and returns a fresh access token.
    pub async fn login(&self, email: &str) -> String {
        let credentials = serde_json::json!({"email": email, "password": "correct horse battery"});
        self.http
            .post(self.url("/api/v1/auth/register"))
            .json(&credentials)
            .send()
            .await
            .expect("register");
        let tokens: serde_json::Value = self
            .http
            .post(self.url("/api/v1/auth/login"))
            .json(&credentials)
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("json");
        tokens["accessToken"]
            .as_str()
            .expect("an access token")
            .to_owned()
    }

    /// Registers `email` (password "correct horse battery"), makes it an admin the way
    /// operators do (`portico users grant-admin`), and returns a fresh access token.
    pub async fn login_admin(&self, email: &str) -> String {
        self.login(email).await;
        grant_admin(&self.database_url, email).await;
        self.login(email).await
    }

    /// Stops one service, as a crash or a rollout would.
    pub async fn stop(&mut self, component: Component) {
        assert!(
            self.suite().stop_service(component).await,
            "{} drained",
            component.name()
        );
    }

    /// Graceful shutdown of the whole suite; true when it finished within the deadline.
    pub async fn shutdown(mut self) -> bool {
        let suite = self.suite.take().expect("suite is running");
        suite.shutdown().await
    }
}

/// `portico users grant-admin EMAIL` against `database_url`, through the same library call.
/// Asserts that `response` has `status` and an `error.message` containing `fragment`; returns
/// the error body for further checks.
pub async fn assert_error(
    response: reqwest::Response,
    status: http::StatusCode,
    fragment: &str,
) -> serde_json::Value {
    assert_eq!(response.status(), status, "{fragment}");
    let body: serde_json::Value = response.json().await.expect("an error body is JSON");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(fragment)),
        "{fragment}: {body}"
    );
    body
}

pub async fn grant_admin(database_url: &str, email: &str) {
    let settings = Settings::from_source(&HashMap::from([(
        "DATABASE_URL".to_owned(),
        database_url.to_owned(),
    )]))
    .expect("settings");
    assert!(
        portico_auth::set_admin(&settings, email, true)
            .await
            .expect("grant-admin"),
        "{email} has an account"
    );
}

/// A fresh Ed25519 signing key file for one suite.
pub fn new_signing_key() -> String {
    let path = std::env::temp_dir()
        .join(format!(
            "portico-test-key-{}.pem",
            uuid::Uuid::new_v4().simple()
        ))
        .display()
        .to_string();
    portico_auth::keys::write_new_key(&path).expect("signing key");
    path
}

fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
            let settings = Settings::from_source(&HashMap::from([(
                "LOG_FORMAT".to_owned(),
                "pretty".to_owned(),
            )]))
            .expect("log settings");
            // The guard owns no exporter here; forgetting it keeps logging for the whole run.
            std::mem::forget(portico_telemetry::init("test", &settings.telemetry));
        }
    });
}

fn require_external() -> bool {
    std::env::var("TEST_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1")
}

/// A fresh database for one suite: a new PostgreSQL database under `TEST_DATABASE_URL`, or a
/// new SQLite file.
async fn test_database() -> String {
    let external = std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty());
    match external {
        Some(admin_url) => match create_postgres_database(&admin_url).await {
            Ok(url) => url,
            Err(error) if require_external() => {
                panic!("TEST_DATABASE_URL={admin_url} is unreachable and TEST_REQUIRE_EXTERNAL=1: {error}")
            }
            Err(error) => {
                eprintln!("WARNING: TEST_DATABASE_URL unreachable ({error}); using SQLite");
                sqlite_file()
            }
        },
        None => sqlite_file(),
    }
}

fn sqlite_file() -> String {
    let path =
        std::env::temp_dir().join(format!("portico-test-{}.db", uuid::Uuid::new_v4().simple()));
    format!("sqlite://{}?mode=rwc", path.display())
}

async fn create_postgres_database(admin_url: &str) -> Result<String, sea_orm::DbErr> {
    let admin = tokio::time::timeout(Duration::from_secs(5), Database::connect(admin_url))
        .await
        .map_err(|_| sea_orm::DbErr::Custom("connect timed out".into()))??;
    drop_stale_databases(&admin).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let name = format!(
        "portico_test_{now}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await?;
    admin.close().await?;
    let (base, query) = admin_url
        .split_once('?')
        .map_or((admin_url, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(prefix, _)| prefix);
    Ok(match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    })
}

/// Test databases older than two hours belong to finished runs: drop them once per process.
async fn drop_stale_databases(admin: &sea_orm::DatabaseConnection) {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        let cutoff = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            - 7200;
        let rows = admin
            .query_all(sea_orm::Statement::from_string(
                admin.get_database_backend(),
                "SELECT datname FROM pg_database WHERE datname LIKE 'portico_test_%'",
            ))
            .await
            .unwrap_or_default();
        for row in rows {
            let Ok(name) = row.try_get::<String>("", "datname") else {
                continue;
            };
            let created = name
                .split('_')
                .nth(2)
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(u64::MAX);
            if created < cutoff {
                let _ = admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
        }
    })
    .await;
}

/// `TEST_REDIS_URL` when set and reachable.
async fn test_redis() -> Option<String> {
    let url = std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|v| !v.is_empty());
    let url = url?;
    match redis_ping(&url).await {
        Ok(()) => Some(url),
        Err(error) if require_external() => {
            panic!("TEST_REDIS_URL={url} is unreachable and TEST_REQUIRE_EXTERNAL=1: {error}")
        }
        Err(error) => {
            eprintln!("WARNING: TEST_REDIS_URL unreachable ({error}); using in-memory");
            None
        }
    }
}

async fn redis_ping(url: &str) -> Result<(), String> {
    use fred::prelude::*;
    let client = Builder::from_config(Config::from_url(url).map_err(|e| e.to_string())?)
        .build()
        .map_err(|e| e.to_string())?;
    let result = tokio::time::timeout(Duration::from_secs(3), async {
        client.init().await?;
        client.ping::<String>(None).await
    })
    .await;
    let _ = client.quit().await;
    match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// A `redis-server` of this test's own, on a free port, that the test may stop and restart:
/// outages are rehearsed without touching the shared server other tests use.
pub struct PrivateRedis {
    /// `redis://127.0.0.1:<port>`.
    pub url: String,
    port: u16,
    /// Where an append-only file keeps the data across restarts, when persistent.
    dir: Option<std::path::PathBuf>,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts a server that keeps nothing on disk and waits until it answers PING.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts a server that keeps its data across [`PrivateRedis::stop`] and
    /// [`PrivateRedis::restart`] (AOF, fsync on every write), as production Redis does.
    pub async fn start_persistent() -> Self {
        let dir =
            std::env::temp_dir().join(format!("portico-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("redis data dir");
        Self::start_with(Some(dir)).await
    }

    async fn start_with(dir: Option<std::path::PathBuf>) -> Self {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            probe.local_addr().expect("addr").port()
        };
        let mut redis = Self {
            url: format!("redis://127.0.0.1:{port}"),
            port,
            dir,
            child: None,
        };
        redis.restart().await;
        redis
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills the server (SIGKILL: a persistent one keeps what it had fsynced, i.e. everything).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub async fn restart(&mut self) {
        let port = self.port.to_string();
        let mut args = vec!["--port", &port, "--bind", "127.0.0.1", "--save", ""];
        match &self.dir {
            Some(dir) => args.extend([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                dir.to_str().expect("utf-8 temp dir"),
            ]),
            None => args.extend(["--appendonly", "no"]),
        }
        let child = std::process::Command::new("redis-server")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (it is part of this project's machine setup)");
        self.child = Some(child);
        // Wait for the event "accepts connections", bounded so a broken server fails the test.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while redis_ping(&self.url).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::task::yield_now().await;
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The `GRPC_PEER_KEY` of standalone services: a test that plays the edge signs with it
/// ([`as_edge`]); any other caller is untrusted, as in production.
pub const TEST_PEER_KEY: &str = "test-peer-key-0123456789abcdef0123456789";

/// Marks `request` as the edge's, forwarding `client_ip` (what the edge does on plaintext hops).
pub fn as_edge<T>(request: &mut tonic::Request<T>, client_ip: &str) {
    let credential = portico_tls::PeerKey::new(TEST_PEER_KEY.as_bytes()).sign_now(client_ip);
    let metadata = request.metadata_mut();
    metadata.insert("x-forwarded-for", client_ip.parse().expect("ascii"));
    metadata.insert(portico_tls::PEER_HEADER, credential.parse().expect("ascii"));
}

/// A standalone service's variables (with [`TEST_PEER_KEY`] unless the test sets its own).
fn source(vars: &[(&str, &str)]) -> HashMap<String, String> {
    let mut source: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    source
        .entry("GRPC_PEER_KEY".into())
        .or_insert_with(|| TEST_PEER_KEY.to_owned());
    source
}

/// A standalone service's listener (127.0.0.1, port 0) and its shutdown token.
async fn listen() -> (tokio::net::TcpListener, tokio_util::sync::CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    (listener, tokio_util::sync::CancellationToken::new())
}

/// A standalone ratelimit service with extra variables and an injected clock.
pub async fn spawn_ratelimit(
    vars: &[(&str, &str)],
    clock: std::sync::Arc<dyn portico_limiter::Clock>,
) -> (SocketAddr, tokio_util::sync::CancellationToken) {
    let mut source = source(vars);
    source
        .entry("REDIS_KEY_PREFIX".into())
        .or_insert_with(|| format!("test:{}:", uuid::Uuid::new_v4().simple()));
    // These tests call Check and Envoy's RLS directly, standing in for the edge and Envoy;
    // tests/suite/tls.rs shows untrusted callers refused.
    source
        .entry("RATELIMIT_ALLOW_UNTRUSTED".into())
        .or_insert_with(|| "true".to_owned());
    let settings = Settings::from_source(&source).expect("ratelimit settings");
    let (listener, shutdown) = listen().await;
    let handle = portico_ratelimit::serve_with_clock(&settings, listener, shutdown.clone(), clock)
        .await
        .expect("ratelimit starts");
    (handle.local_addr, shutdown)
}

/// `TEST_REDIS_URL` when set and reachable (see [`Builder::spawn`] for the rules).
pub async fn shared_redis() -> Option<String> {
    test_redis().await
}

/// A standalone auth service with extra variables and injected parts; also returns its
/// database URL.
pub async fn spawn_auth(
    vars: &[(&str, &str)],
    options: portico_auth::Options,
) -> (SocketAddr, String, tokio_util::sync::CancellationToken) {
    let database_url = test_database().await;
    let mut source = source(vars);
    source.entry("DATABASE_URL".into()).or_insert(database_url);
    source
        .entry("REDIS_KEY_PREFIX".into())
        .or_insert_with(|| format!("test:{}:", uuid::Uuid::new_v4().simple()));
    source
        .entry("JWT_SIGNING_KEY_FILE".into())
        .or_insert_with(new_signing_key);
    if let Some(url) = test_redis().await {
        source.entry("REDIS_URL".into()).or_insert(url);
    }
    let database_url = source["DATABASE_URL"].clone();
    let settings = Settings::from_source(&source).expect("auth settings");
    let (listener, shutdown) = listen().await;
    let handle = portico_auth::serve_with(&settings, listener, shutdown.clone(), options)
        .await
        .expect("auth starts");
    (handle.local_addr, database_url, shutdown)
}

/// A fresh database URL (PostgreSQL under `TEST_DATABASE_URL`, else a SQLite file).
pub async fn fresh_database() -> String {
    test_database().await
}

/// A standalone content service with the given variables (`DATABASE_URL` required).
pub async fn spawn_content(
    vars: &[(&str, &str)],
) -> (SocketAddr, tokio_util::sync::CancellationToken) {
    let source = source(vars);
    let settings = Settings::from_source(&source).expect("content settings");
    let (listener, shutdown) = listen().await;
    let handle = portico_content::serve(&settings, listener, shutdown.clone())
        .await
        .expect("content starts");
    (handle.local_addr, shutdown)
}

/// A standalone chat gateway with the given variables and an injected circuit clock, on a
/// fresh database.
pub async fn spawn_chat(
    vars: &[(&str, &str)],
    clock: std::sync::Arc<dyn portico_limiter::Clock>,
) -> (SocketAddr, tokio_util::sync::CancellationToken) {
    let mut source = source(vars);
    if !source.contains_key("DATABASE_URL") {
        source.insert("DATABASE_URL".into(), test_database().await);
    }
    // These tests call Complete directly, standing in for the edge; tests/suite/tls.rs shows
    // untrusted callers refused.
    source
        .entry("CHAT_ALLOW_UNTRUSTED".into())
        .or_insert_with(|| "true".to_owned());
    let settings = Settings::from_source(&source).expect("chat settings");
    let (listener, shutdown) = listen().await;
    let handle = portico_chat_gateway::serve_with(
        &settings,
        listener,
        shutdown.clone(),
        portico_chat_gateway::Options { clock },
    )
    .await
    .expect("chat gateway starts");
    (handle.local_addr, shutdown)
}

/// Writes an `LLM_PROVIDERS_FILE` listing `(name, base_url, priority)` and returns its path.
pub fn providers_file(providers: &[(&str, &str, i32)]) -> String {
    let mut text = String::from("providers:\n");
    for (name, base_url, priority) in providers {
        text.push_str(&format!(
            "  - name: {name}\n    base_url: {base_url}\n    model: fake-model\n    priority: {priority}\n"
        ));
    }
    let path = std::env::temp_dir().join(format!(
        "portico-providers-{}.yaml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, text).expect("write providers file");
    path.to_string_lossy().into_owned()
}
