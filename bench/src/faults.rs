//! `scenario faults`: rehearses dependency outages against a real Portico under load — Redis
//! killed and restarted with its data, PostgreSQL cut at the network, the LLM provider gone, the
//! process itself sent SIGTERM — and prints one JSON line per experiment: failures by status and
//! their latency, success latency, recovery time and stale reads.
//!
//! Every experiment has three phases of `--duration-per-phase`: `before` the fault, `during` it,
//! and `after` the dependency is back (at least one phase long, then until every kind of request
//! has succeeded again and `/readyz` says `ok`, at most [`RECOVERY_CAP`] more). A request belongs
//! to the phase it was *sent* in.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_faultproxy::FaultProxy;
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

/// Longest wait for recovery beyond the minimum `after` phase. The chat circuit breaker's
/// default reset timeout is 30 s, so recovery from a provider outage legitimately takes that.
const RECOVERY_CAP: Duration = Duration::from_secs(45);
/// A client gives up on one request after this (longer than `EDGE_REQUEST_TIMEOUT`'s 10 s, so
/// the edge's own deadline shows as a status, not as our timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a server may take to become ready.
const START_DEADLINE: Duration = Duration::from_secs(60);
const ADMIN_KEY: &str = crate::BENCH_ADMIN_KEY;
const PASSWORD: &str = "correct horse battery";
const CHAT_BODY: &[u8] =
    br#"{"messages":[{"role":"user","content":"Say something short."}],"max_tokens":32}"#;
const COMPLETION: &[u8] = br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"A short answer of a few words."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}"#;
/// Limits far above what the load spends: a 429 from the README's defaults (100/min per IP)
/// would hide the outage's own failures.
const UNLIMITED: [(&str, &str); 5] = [
    ("RATE_LIMIT_GLOBAL_MAX", "10000000"),
    ("RATE_LIMIT_GLOBAL_WINDOW", "1s"),
    ("RATE_LIMIT_AUTH_MAX", "10000000"),
    ("RATE_LIMIT_CAPACITY", "10000000"),
    ("RATE_LIMIT_REFILL_RATE", "1000000"),
];

#[derive(Debug, Clone, Args)]
pub struct FaultArgs {
    /// The `portico` binary the `sigterm` experiment runs as a child process.
    #[arg(long, default_value = "target/release/portico")]
    portico: PathBuf,
    /// Seconds of each phase (before the fault, during it, and the least after it).
    #[arg(long, default_value_t = 10.0)]
    duration_per_phase: f64,
    /// One-second phases, for CI (overrides --duration-per-phase).
    #[arg(long)]
    smoke: bool,
    /// Only these experiments (repeatable; default: all, in order).
    #[arg(long, value_enum)]
    only: Vec<Experiment>,
    /// The `redis-server` that `redis-kill-with-data` starts privately.
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    /// A PostgreSQL URL allowed to create databases, for `postgres-cut`.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Experiment {
    RedisKillWithData,
    PostgresCut,
    ProviderKill,
    Sigterm,
}

impl Experiment {
    const ALL: [Experiment; 4] = [
        Experiment::RedisKillWithData,
        Experiment::PostgresCut,
        Experiment::ProviderKill,
        Experiment::Sigterm,
    ];

    fn name(self) -> &'static str {
        match self {
            Experiment::RedisKillWithData => "redis-kill-with-data",
            Experiment::PostgresCut => "postgres-cut",
            Experiment::ProviderKill => "provider-kill",
            Experiment::Sigterm => "sigterm",
        }
    }
}

/// Runs the selected experiments, one JSON line each; fails when any of them could not run.
pub async fn run(args: FaultArgs) -> anyhow::Result<()> {
    let seconds = if args.smoke {
        1.0
    } else {
        args.duration_per_phase
    };
    let phase = Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--duration-per-phase must be a positive number of seconds")?;
    let selected = if args.only.is_empty() {
        Experiment::ALL.to_vec()
    } else {
        args.only.clone()
    };
    let mut failed = Vec::new();
    for experiment in selected {
        let result = match experiment {
            Experiment::RedisKillWithData => redis_kill(&args, phase).await,
            Experiment::PostgresCut => postgres_cut(&args, phase).await,
            Experiment::ProviderKill => provider_kill(phase).await,
            Experiment::Sigterm => sigterm(&args, phase).await,
        };
        match result {
            Ok(line) => println!("{}", serde_json::to_string(&line)?),
            Err(error) => {
                println!(
                    "{}",
                    serde_json::json!({"experiment": experiment.name(), "error": format!("{error:#}")})
                );
                failed.push(experiment.name());
            }
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "experiments that could not run: {}",
        failed.join(", ")
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The experiments.

/// Redis (AOF on) SIGKILLed under load, a PUT during the outage, Redis restarted on the same
/// port and directory: does a read after the restart serve what the PUT replaced?
async fn redis_kill(args: &FaultArgs, phase: Duration) -> anyhow::Result<Line> {
    let tmp = TempDir::new("redis")?;
    let port = free_port()?;
    let mut redis = RedisServer::start(&args.redis_server, tmp.path(), port).await?;
    let (suite, vars) = start_suite(
        &tmp,
        vec![("REDIS_URL", format!("redis://127.0.0.1:{port}"))],
    )
    .await?;
    let edge = suite.edge_addr;
    let rec = Arc::new(Recorder::default());

    let slug = "fault-rehearsal";
    let created = call(
        edge,
        admin(post(
            "/api/v1/admin/content",
            format!(r#"{{"slug":"{slug}","title":"Version 1","body":"Before the outage.","tags":["bench"],"status":"published"}}"#),
        )),
    )
    .await?;
    anyhow::ensure!(created.0 == 201, "creating the item answered {}", created.0);
    rec.ack(version_of(&created.1).context("the created item has no version")?);
    // The first read fills the service's and the edge's caches, the second is served by them.
    for _ in 0..2 {
        let (status, _) = call(edge, get(&format!("/api/v1/content/{slug}"))).await?;
        anyhow::ensure!(status == 200, "reading the item answered {status}");
    }
    let login = register(edge, "redis@example.com").await?;

    let load = Load::start(
        edge,
        &rec,
        vec![
            (Op::ReadItem(slug.into()), 2, Duration::from_millis(10)),
            (Op::Healthz, 1, Duration::from_millis(20)),
            (Op::Login(login), 1, Duration::from_millis(50)),
        ],
        true,
    );
    tokio::time::sleep(phase).await;
    // SIGKILL: a crash, not a clean stop. Redis write()s its AOF before replying, so every
    // acknowledged write is in the file (the page cache outlives the process) without the
    // flush a SIGTERM would add.
    redis.kill().await?;
    let killed = rec.enter(Phase::During);
    tokio::time::sleep(phase / 2).await;
    let during_put = put_item(edge, slug, rec.acked(), "Version during the outage").await;
    if let Some(version) = during_put.acked_version() {
        rec.ack(version);
    }
    tokio::time::sleep_until((killed + phase).into()).await;
    let restored = redis.spawn().await?;
    rec.enter_at(Phase::After, restored);
    let waited = rec.wait_recovered(&load.kinds, phase).await;
    load.finish().await?;
    // A write once everything is back: writes must work again.
    let after_put = put_item(edge, slug, rec.acked(), "Version after recovery").await;
    suite.shutdown().await;
    redis.kill().await?;

    rec.line(
        Experiment::RedisKillWithData,
        Config::new(
            &vars,
            "redis-server (--appendonly yes, --save \"\") SIGKILLed, restarted on the same --port and --dir (data kept)",
            phase,
        ),
        Some(waited),
        serde_json::json!({
            "put_during_outage": during_put,
            "put_after_recovery": after_put,
            "redis_port": port,
        }),
    )
}

/// PostgreSQL behind a proxy that cuts every connection for a phase: logins with the right
/// password, content writes and `/healthz` throughout; afterwards the right password must work.
async fn postgres_cut(args: &FaultArgs, phase: Duration) -> anyhow::Result<Line> {
    use sea_orm::ConnectionTrait as _;
    let (userinfo, upstream) = postgres_server(&args.postgres_url)?;
    let database = format!("portico_bench_{}", unique());
    let server = sea_orm::Database::connect(args.postgres_url.as_str())
        .await
        .with_context(|| format!("cannot connect to {}", args.postgres_url))?;
    server
        .execute_unprepared(&format!("CREATE DATABASE {database}"))
        .await
        .with_context(|| format!("CREATE DATABASE {database}"))?;
    let result = postgres_cut_in(phase, &userinfo, upstream, &database).await;
    // Dropped whatever happened; FORCE ends connections a failed run may have left open.
    let dropped = server
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await;
    let line = result?;
    dropped.with_context(|| format!("DROP DATABASE {database}"))?;
    Ok(line)
}

async fn postgres_cut_in(
    phase: Duration,
    userinfo: &str,
    upstream: SocketAddr,
    database: &str,
) -> anyhow::Result<Line> {
    let tmp = TempDir::new("postgres")?;
    let proxy = FaultProxy::start(upstream)
        .await
        .context("starting the fault proxy")?;
    let (suite, vars) = start_suite(
        &tmp,
        vec![(
            "DATABASE_URL",
            format!("postgres://{userinfo}{}/{database}", proxy.addr()),
        )],
    )
    .await?;
    let edge = suite.edge_addr;
    let rec = Arc::new(Recorder::default());
    let login = register(edge, "postgres@example.com").await?;

    let load = Load::start(
        edge,
        &rec,
        vec![
            // Two at once: within AUTH_LOGIN_MAX_ATTEMPTS (5), so concurrency alone never locks.
            (Op::Login(login.clone()), 2, Duration::from_millis(50)),
            (Op::CreateContent, 1, Duration::from_millis(50)),
            (Op::Healthz, 1, Duration::from_millis(20)),
        ],
        true,
    );
    tokio::time::sleep(phase).await;
    proxy.cut();
    rec.enter(Phase::During);
    tokio::time::sleep(phase).await;
    proxy.restore();
    rec.enter(Phase::After);
    let waited = rec.wait_recovered(&load.kinds, phase).await;
    load.finish().await?;
    // The outage must not have locked the right password out.
    let login_after = Probe::send(edge, post("/api/v1/auth/login", login)).await;
    suite.shutdown().await;
    drop(proxy);

    rec.line(
        Experiment::PostgresCut,
        Config::new(
            &vars,
            format!("fault proxy to {upstream} cut (open connections closed, new ones refused), then restored"),
            phase,
        ),
        Some(waited),
        serde_json::json!({
            "login_after_recovery": login_after,
            "login_after_recovery_ok": login_after.ok(),
            "database": database,
        }),
    )
}

/// The only LLM provider stops (its listener and every connection closed) and comes back on the
/// same port: 502s, their latency, and how long until chat answers again.
async fn provider_kill(phase: Duration) -> anyhow::Result<Line> {
    let tmp = TempDir::new("provider")?;
    let provider = FakeProvider::start("127.0.0.1:0".parse()?).await?;
    let addr = provider.addr;
    let (suite, vars) = start_suite(
        &tmp,
        vec![
            ("LLM_BASE_URL", format!("http://{addr}/v1")),
            ("LLM_MODEL", "bench".into()),
            ("LLM_API_KEY", "bench-provider-key".into()),
        ],
    )
    .await?;
    let edge = suite.edge_addr;
    let rec = Arc::new(Recorder::default());
    let load = Load::start(
        edge,
        &rec,
        vec![(Op::Chat, 2, Duration::from_millis(20))],
        true,
    );
    tokio::time::sleep(phase).await;
    provider.stop();
    rec.enter(Phase::During);
    tokio::time::sleep(phase).await;
    let provider = FakeProvider::start(addr)
        .await
        .with_context(|| format!("restarting the fake provider on {addr}"))?;
    rec.enter(Phase::After);
    let waited = rec.wait_recovered(&load.kinds, phase).await;
    load.finish().await?;
    suite.shutdown().await;
    provider.stop();

    rec.line(
        Experiment::ProviderKill,
        Config::new(
            &vars,
            format!("fake OpenAI-compatible provider on {addr} stopped (listener and connections closed), restarted on the same port"),
            phase,
        ),
        Some(waited),
        serde_json::json!({"provider": addr.to_string()}),
    )
}

/// The real binary under load gets SIGTERM: are the requests in flight answered, how long until
/// it exits, with which status?
async fn sigterm(args: &FaultArgs, phase: Duration) -> anyhow::Result<Line> {
    // Absolute: the child runs in its own directory, where a relative path would not resolve.
    let portico = std::fs::canonicalize(&args.portico).with_context(|| {
        format!(
            "{} not found: build it with `cargo build --release -p portico` or pass --portico PATH",
            args.portico.display()
        )
    })?;
    let tmp = TempDir::new("sigterm")?;
    let edge: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut vars = base_vars(&tmp)?;
    vars.insert("EDGE_ADDR".into(), edge.to_string());
    // `serve` wires the edge to wherever the services bound.
    for name in ["AUTH_ADDR", "CONTENT_ADDR", "CHAT_ADDR", "RATELIMIT_ADDR"] {
        vars.insert(name.into(), "127.0.0.1:0".into());
    }
    vars.insert("LOG_LEVEL".into(), "error".into());
    let log = tmp.path().join("portico.log");
    let output = std::fs::File::create(&log)?;
    let mut child = tokio::process::Command::new(&portico)
        .arg("serve")
        // Nothing from our environment: the README's defaults plus `vars`, exactly.
        .env_clear()
        .envs(&vars)
        .current_dir(tmp.path())
        .stdout(output.try_clone()?)
        .stderr(output)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", portico.display()))?;
    if let Err(error) = wait_ready(edge, Some(&mut child)).await {
        // The directory goes with this run: quote what portico said.
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: String = said.lines().rev().take(20).collect::<Vec<_>>().join(" | ");
        return Err(error.context(format!("portico's output (last lines first): {tail}")));
    }
    let pid = child.id().context("portico exited at once")?;

    let rec = Arc::new(Recorder::default());
    let mut ops = vec![
        (Op::Healthz, 2, Duration::from_millis(10)),
        (Op::Chat, 2, Duration::from_millis(10)),
    ];
    // One account per connection: hashing makes logins the slow requests likely to be in flight.
    for i in 0..4 {
        let login = register(edge, &format!("sigterm{i}@example.com")).await?;
        ops.push((Op::Login(login), 1, Duration::from_millis(25)));
    }
    let load = Load::start(edge, &rec, ops, false);
    tokio::time::sleep(phase).await;
    // No new requests from here on: what is still outstanding when the signal lands is in flight.
    load.stop_sending();
    let kill = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await
        .context("cannot run kill")?;
    anyhow::ensure!(kill.success(), "kill -TERM {pid} failed: {kill}");
    let signalled = rec.enter(Phase::During);
    // SHUTDOWN_TIMEOUT (10 s) plus slack.
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    let exit_ms = ms(signalled.elapsed());
    load.finish().await?;
    let (exited, exit_code, exit_signal) = match exit {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt as _;
            let status = status?;
            (true, status.code(), status.signal())
        }
        Err(_) => {
            child.start_kill()?;
            (false, None, None)
        }
    };

    let in_flight = rec.in_flight(signalled);
    rec.line(
        Experiment::Sigterm,
        Config::new(
            &vars,
            format!(
                "`kill -TERM` to {} serve (pid {pid}) under load; no new requests after it",
                portico.display()
            ),
            phase,
        ),
        None,
        serde_json::json!({
            "in_flight_at_signal": in_flight,
            "exited": exited,
            "exit_ms": exited.then_some(exit_ms),
            "exit_code": exit_code,
            "exit_signal": exit_signal,
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// Setup.

/// The variables every experiment sets (plus `suite_vars`' ephemeral addresses): a database and
/// signing key in the run's directory, the admin key, and limits out of the way.
fn base_vars(tmp: &TempDir) -> anyhow::Result<HashMap<String, String>> {
    let key = tmp.path().join("jwt-signing-key.pem").display().to_string();
    portico_auth::keys::write_new_key(&key).map_err(|e| anyhow::anyhow!(e))?;
    let mut vars: HashMap<String, String> = UNLIMITED
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    vars.insert(
        "DATABASE_URL".into(),
        format!("sqlite://{}?mode=rwc", tmp.path().join("p.db").display()),
    );
    vars.insert("JWT_SIGNING_KEY_FILE".into(), key);
    vars.insert("ADMIN_API_KEY".into(), ADMIN_KEY.into());
    Ok(vars)
}

/// Boots the suite in this process with `extra` over [`base_vars`] and waits until it is ready.
async fn start_suite(
    tmp: &TempDir,
    extra: Vec<(&str, String)>,
) -> anyhow::Result<(portico::Suite, HashMap<String, String>)> {
    let mut named: Vec<(&str, String)> = Vec::new();
    let base = base_vars(tmp)?;
    named.extend(base.iter().map(|(k, v)| (k.as_str(), v.clone())));
    named.extend(extra);
    let vars = crate::suite_vars(&named);
    let suite = portico::Suite::start(portico_config::Settings::from_source(&vars)?).await?;
    wait_ready(suite.edge_addr, None).await?;
    Ok((suite, vars))
}

/// Polls `/readyz` until it is 200 with `"status":"ok"`, within [`START_DEADLINE`]; a child
/// that exits meanwhile fails at once.
pub(crate) async fn wait_ready(
    edge: SocketAddr,
    mut child: Option<&mut tokio::process::Child>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Some(child) = child.as_deref_mut() {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("portico exited with {status} before it was ready");
            }
        }
        let last = match call(edge, get("/readyz")).await {
            Ok((200, body)) if readiness_label(200, &body) == "200 ok" => return Ok(()),
            Ok((status, body)) => readiness_label(status, &body),
            Err(error) => format!("{error:#}"),
        };
        anyhow::ensure!(
            Instant::now() < deadline,
            "{edge} not ready within {START_DEADLINE:?}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Registers `email`; returns the login body for it.
async fn register(edge: SocketAddr, email: &str) -> anyhow::Result<Bytes> {
    let body = format!(r#"{{"email":"{email}","password":"{PASSWORD}"}}"#);
    let (status, answer) = call(edge, post("/api/v1/auth/register", body.clone())).await?;
    anyhow::ensure!(
        status == 201,
        "registering {email} answered {status}: {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(Bytes::from(body))
}

/// `user@` (or empty) and the server address of a PostgreSQL URL.
fn postgres_server(url: &str) -> anyhow::Result<(String, SocketAddr)> {
    let rest = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .context("--postgres-url needs postgres://")?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((user, host)) => (format!("{user}@"), host),
        None => (String::new(), authority),
    };
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    Ok((userinfo, crate::tokio_lookup(&host)?))
}

/// A port nobody listens on right now (for servers that must come back on the same one).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{}_{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

/// A directory of its own for one run, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("portico-bench-faults-{name}-{}", unique()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private `redis-server` with AOF persistence on a fixed port and directory.
struct RedisServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<tokio::process::Child>,
}

impl RedisServer {
    async fn start(bin: &Path, dir: &Path, port: u16) -> anyhow::Result<Self> {
        let mut redis = Self {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            port,
            child: None,
        };
        redis.spawn().await?;
        Ok(redis)
    }

    /// Starts it (again) and returns when it first answers PING: restored.
    async fn spawn(&mut self) -> anyhow::Result<Instant> {
        let log = self.dir.join("redis.log");
        let mut child = tokio::process::Command::new(&self.bin)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--appendonly", "yes", "--save", ""])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("redis-server exited with {status}; see {}", log.display());
            }
            if ping(self.port).await {
                self.child = Some(child);
                return Ok(Instant::now());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within {START_DEADLINE:?}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL, and waits until it is gone.
    async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("killing redis-server")?;
        }
        Ok(())
    }
}

/// Whether Redis on `port` answers PING with PONG (not `-LOADING` while it replays its AOF).
async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await?;
        std::io::Result::Ok(buf[..n].starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Ok(true))
    )
}

/// An OpenAI-compatible provider answering every request with a fixed completion; `stop`
/// closes its listener and every connection, as a provider process that died.
struct FakeProvider {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl FakeProvider {
    async fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
                TokioExecutor::new(),
            ));
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                let builder = builder.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_request| async {
                        let mut response =
                            http::Response::new(Full::new(Bytes::from_static(COMPLETION)));
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::convert::Infallible>(response)
                    });
                    // Dropping the connection on stop closes its socket.
                    tokio::select! {
                        () = token.cancelled() => {}
                        _ = builder.serve_connection(TokioIo::new(stream), service) => {}
                    }
                });
            }
        });
        Ok(Self { addr, stop })
    }

    fn stop(self) {
        self.stop.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// Requests.

const READ_KIND: &str = "GET /api/v1/content/{slug}";

/// What the load sends.
#[derive(Clone)]
enum Op {
    Healthz,
    /// A public read, checked for staleness.
    ReadItem(String),
    /// A login with the right password (the body).
    Login(Bytes),
    /// An admin create of a new item.
    CreateContent,
    Chat,
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::Healthz => "GET /healthz",
            Op::ReadItem(_) => READ_KIND,
            Op::Login(_) => "POST /api/v1/auth/login",
            Op::CreateContent => "POST /api/v1/admin/content",
            Op::Chat => "POST /v1/chat/completions",
        }
    }

    /// The `n`-th request (`n` unique within the run).
    fn draft(&self, n: u64) -> Draft {
        match self {
            Op::Healthz => get("/healthz"),
            Op::ReadItem(slug) => get(&format!("/api/v1/content/{slug}")),
            Op::Login(body) => post("/api/v1/auth/login", body.clone()),
            Op::CreateContent => admin(post(
                "/api/v1/admin/content",
                format!(
                    r#"{{"slug":"fault-{n}","title":"Written under load","body":"A fault rehearsal.","tags":["bench"],"status":"published"}}"#
                ),
            )),
            Op::Chat => post("/v1/chat/completions", Bytes::from_static(CHAT_BODY)),
        }
    }
}

/// A request being built and its body.
type Draft = (http::request::Builder, Bytes);

fn get(path: &str) -> Draft {
    (http::Request::get(path), Bytes::new())
}

fn post(path: &str, body: impl Into<Bytes>) -> Draft {
    (
        http::Request::post(path).header(http::header::CONTENT_TYPE, "application/json"),
        body.into(),
    )
}

fn admin((builder, body): Draft) -> Draft {
    (builder.header("x-admin-key", ADMIN_KEY), body)
}

/// How a request ended.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Status(u16),
    /// Connection refused, reset or closed before the answer.
    Transport,
    /// No answer within [`REQUEST_TIMEOUT`].
    Timeout,
}

impl Outcome {
    fn ok(self) -> bool {
        matches!(self, Outcome::Status(status) if (200..300).contains(&status))
    }
}

/// One HTTP/1.1 connection to the edge, reopened after a failure.
struct Client {
    addr: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, sender: None }
    }

    async fn send(&mut self, (builder, body): Draft) -> Result<(u16, Bytes), Outcome> {
        let request = builder
            .header(http::header::HOST, self.addr.to_string())
            .body(Full::new(body))
            .map_err(|_| Outcome::Transport)?;
        match tokio::time::timeout(REQUEST_TIMEOUT, self.try_send(request)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => {
                self.sender = None;
                Err(Outcome::Transport)
            }
            Err(_) => {
                self.sender = None;
                Err(Outcome::Timeout)
            }
        }
    }

    async fn try_send(
        &mut self,
        request: http::Request<Full<Bytes>>,
    ) -> anyhow::Result<(u16, Bytes)> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().context("no connection")?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// One request on a connection of its own.
async fn call(edge: SocketAddr, draft: Draft) -> anyhow::Result<(u16, Bytes)> {
    Client::new(edge)
        .send(draft)
        .await
        .map_err(|outcome| anyhow::anyhow!("request to {edge} failed: {outcome:?}"))
}

/// A single request's result, as printed.
#[derive(Debug, Serialize)]
struct Probe {
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<i64>,
}

impl Probe {
    /// Sends `draft` on a connection of its own.
    async fn send(edge: SocketAddr, draft: Draft) -> Self {
        let started = Instant::now();
        let result = call(edge, draft).await;
        Self::timed(started.elapsed(), result)
    }

    fn timed(latency: Duration, result: anyhow::Result<(u16, Bytes)>) -> Self {
        match result {
            Ok((status, body)) => Self {
                status: Some(status),
                error: None,
                latency_ms: ms(latency),
                version: version_of(&body),
            },
            Err(error) => Self {
                status: None,
                error: Some(format!("{error:#}")),
                latency_ms: ms(latency),
                version: None,
            },
        }
    }

    fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// The version a 2xx PUT wrote.
    fn acked_version(&self) -> Option<i64> {
        self.version.filter(|_| self.ok())
    }
}

/// `PUT /api/v1/admin/content/{slug}` replacing version `expected`.
async fn put_item(edge: SocketAddr, slug: &str, expected: i64, title: &str) -> Probe {
    let (builder, body) = admin((
        http::Request::put(format!("/api/v1/admin/content/{slug}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::IF_MATCH, format!("\"{expected}\"")),
        Bytes::from(format!(
            r#"{{"title":"{title}","body":"Replaces version {expected}.","tags":["bench"]}}"#
        )),
    ));
    Probe::send(edge, (builder, body)).await
}

fn version_of(body: &[u8]) -> Option<i64> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("version")?
        .as_i64()
}

/// `/readyz` in a few words: the code, the status, and the checks that are not ok, e.g.
/// `200 degraded: cache` or `200 degraded: chat(open)`.
fn readiness_label(status: u16, body: &[u8]) -> String {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return format!("{status} (not JSON)");
    };
    let overall = json["status"].as_str().unwrap_or("?");
    let mut bad = Vec::new();
    if let Some(checks) = json["checks"].as_object() {
        for (name, check) in checks {
            if check["status"] != "ok" {
                match check["circuitBreaker"].as_str() {
                    Some(circuit) => bad.push(format!("{name}({circuit})")),
                    None => bad.push(name.clone()),
                }
            }
        }
    }
    if bad.is_empty() {
        format!("{status} {overall}")
    } else {
        format!("{status} {overall}: {}", bad.join(","))
    }
}

fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

// ---------------------------------------------------------------------------------------------
// Load and its record.

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    #[default]
    Before,
    During,
    After,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::During => "during",
            Phase::After => "after",
        }
    }
}

struct Sample {
    kind: &'static str,
    phase: Phase,
    sent: Instant,
    done: Instant,
    outcome: Outcome,
    stale: bool,
}

#[derive(Default)]
struct State {
    phase: Phase,
    /// When the dependency was back (the `after` phase began).
    restored: Option<Instant>,
    samples: Vec<Sample>,
    /// By kind: when the first request sent after `restored` succeeded.
    first_success: BTreeMap<&'static str, Instant>,
    /// `/readyz` answers by phase and label.
    readiness: BTreeMap<Phase, BTreeMap<String, u64>>,
    first_ready_200: Option<Instant>,
    first_ready_ok: Option<Instant>,
    polling_readiness: bool,
}

/// Everything the load saw, shared by its workers.
#[derive(Default)]
struct Recorder {
    state: Mutex<State>,
    /// The version of the item that the last 2xx PUT wrote: a read sent after that returning
    /// an older one is stale.
    acked_version: AtomicI64,
    next_id: AtomicU64,
    changed: tokio::sync::Notify,
}

impl Recorder {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ack(&self, version: i64) {
        self.acked_version.fetch_max(version, Ordering::SeqCst);
    }

    fn acked(&self) -> i64 {
        self.acked_version.load(Ordering::SeqCst)
    }

    fn enter(&self, phase: Phase) -> Instant {
        let now = Instant::now();
        self.enter_at(phase, now);
        now
    }

    fn enter_at(&self, phase: Phase, at: Instant) {
        let mut state = self.state();
        state.phase = phase;
        if phase == Phase::After {
            state.restored = Some(at);
        }
    }

    fn phase(&self) -> Phase {
        self.state().phase
    }

    fn record(&self, sample: Sample) {
        let mut state = self.state();
        if sample.outcome.ok() && state.restored.is_some_and(|r| sample.sent >= r) {
            state
                .first_success
                .entry(sample.kind)
                .or_insert(sample.done);
        }
        state.samples.push(sample);
        drop(state);
        self.changed.notify_waiters();
    }

    fn record_readiness(&self, phase: Phase, sent: Instant, status: Option<u16>, label: String) {
        let mut state = self.state();
        let now = Instant::now();
        if state.restored.is_some_and(|r| sent >= r) {
            if status == Some(200) {
                state.first_ready_200.get_or_insert(now);
            }
            if label == "200 ok" {
                state.first_ready_ok.get_or_insert(now);
            }
        }
        *state
            .readiness
            .entry(phase)
            .or_default()
            .entry(label)
            .or_default() += 1;
        drop(state);
        self.changed.notify_waiters();
    }

    fn recovered(&self, kinds: &[&'static str]) -> bool {
        let state = self.state();
        kinds.iter().all(|k| state.first_success.contains_key(k))
            && (!state.polling_readiness || state.first_ready_ok.is_some())
    }

    /// Waits at least `min` after the restore, then until every kind has succeeded again and
    /// readiness is ok, at most [`RECOVERY_CAP`] more. Returns how long the `after` phase ran.
    async fn wait_recovered(&self, kinds: &[&'static str], min: Duration) -> Duration {
        let started = Instant::now();
        tokio::time::sleep(min).await;
        let deadline = tokio::time::Instant::now() + RECOVERY_CAP;
        loop {
            // Registered before the check, so a record between the check and the wait wakes it.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.recovered(kinds) {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        started.elapsed()
    }

    /// Requests sent before `signal` and finished after it, by how they ended.
    fn in_flight(&self, signal: Instant) -> serde_json::Value {
        let state = self.state();
        let mut answered = 0u64;
        let mut other = BTreeMap::<u16, u64>::new();
        let mut failed = 0u64;
        for sample in state
            .samples
            .iter()
            .filter(|s| s.sent < signal && s.done > signal)
        {
            match sample.outcome {
                outcome if outcome.ok() => answered += 1,
                Outcome::Status(status) => *other.entry(status).or_default() += 1,
                Outcome::Transport | Outcome::Timeout => failed += 1,
            }
        }
        serde_json::json!({
            "total": answered + other.values().sum::<u64>() + failed,
            "answered_2xx": answered,
            "answered_other": other,
            "failed_transport": failed,
        })
    }

    fn line(
        &self,
        experiment: Experiment,
        config: Config,
        after_phase: Option<Duration>,
        details: serde_json::Value,
    ) -> anyhow::Result<Line> {
        let state = self.state();
        let mut failures = Failures::default();
        let mut failed = crate::new_histogram()?;
        let mut succeeded = crate::new_histogram()?;
        let mut phases = Phases::default();
        let mut by_kind = BTreeMap::<&'static str, Count>::new();
        let mut reads_checked = 0;
        for sample in &state.samples {
            let micros = sample.done.duration_since(sample.sent).as_micros().max(1) as u64;
            let ok = sample.outcome.ok();
            if ok {
                succeeded.saturating_record(micros);
            } else {
                failed.saturating_record(micros);
                failures.total += 1;
                match sample.outcome {
                    Outcome::Status(status) => *failures.by_status.entry(status).or_default() += 1,
                    Outcome::Transport => failures.transport += 1,
                    Outcome::Timeout => failures.timeout += 1,
                }
            }
            if sample.kind == READ_KIND && ok {
                reads_checked += 1;
            }
            for count in [
                phases.get(sample.phase),
                by_kind.entry(sample.kind).or_default(),
            ] {
                count.requests += 1;
                count.failures += u64::from(!ok);
                count.stale_reads += u64::from(sample.stale);
            }
        }
        let recovery = after_phase.and_then(|after| {
            let restored = state.restored?;
            let since = |t: Option<&Instant>| t.map(|t| ms(t.duration_since(restored)));
            let first_success: BTreeMap<_, _> = by_kind
                .keys()
                .map(|kind| (*kind, since(state.first_success.get(kind))))
                .collect();
            Some(Recovery {
                all_kinds_ms: first_success
                    .values()
                    .try_fold(0.0f64, |max, ms| ms.map(|ms| max.max(ms))),
                first_success_ms: first_success,
                readyz_200_ms: since(state.first_ready_200.as_ref()),
                readyz_ok_ms: since(state.first_ready_ok.as_ref()),
                after_phase_s: after.as_secs_f64(),
            })
        });
        let quantile = |h: &hdrhistogram::Histogram<u64>, q: f64| {
            (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
        };
        Ok(Line {
            experiment: experiment.name(),
            config,
            requests: state.samples.len() as u64,
            failures,
            failure_latency_ms: Latency {
                p50: quantile(&failed, 0.5),
                p99: quantile(&failed, 0.99),
                max: (!failed.is_empty()).then(|| failed.max() as f64 / 1000.0),
            },
            success_latency_ms: Latency {
                p50: quantile(&succeeded, 0.5),
                p99: quantile(&succeeded, 0.99),
                max: None,
            },
            recovery,
            stale_reads: phases.before.stale_reads
                + phases.during.stale_reads
                + phases.after.stale_reads,
            reads_checked,
            phases,
            by_kind,
            readiness: state.polling_readiness.then(|| {
                state
                    .readiness
                    .iter()
                    .map(|(phase, labels)| (phase.name(), labels.clone()))
                    .collect()
            }),
            details,
        })
    }
}

/// Workers sending `Op`s at fixed intervals until stopped, and optionally a `/readyz` poller.
struct Load {
    kinds: Vec<&'static str>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Load {
    /// `ops`: what, on how many connections, every how long (each connection on its own
    /// schedule: a paced load leaves the two cores room to recover, and time-to-recovery has a
    /// resolution of one interval).
    fn start(
        edge: SocketAddr,
        rec: &Arc<Recorder>,
        ops: Vec<(Op, usize, Duration)>,
        poll_readiness: bool,
    ) -> Self {
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut kinds = Vec::new();
        for (op, connections, every) in ops {
            if !kinds.contains(&op.kind()) {
                kinds.push(op.kind());
            }
            for _ in 0..connections {
                tasks.spawn(worker(edge, op.clone(), every, rec.clone(), stop.clone()));
            }
        }
        if poll_readiness {
            rec.state().polling_readiness = true;
            tasks.spawn(readiness_poller(edge, rec.clone(), stop.clone()));
        }
        Self { kinds, stop, tasks }
    }

    /// No worker starts another request; those in flight finish.
    fn stop_sending(&self) {
        self.stop.cancel();
    }

    async fn finish(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        while let Some(joined) = self.tasks.join_next().await {
            joined.context("a load worker panicked")?;
        }
        Ok(())
    }
}

async fn worker(
    edge: SocketAddr,
    op: Op,
    every: Duration,
    rec: Arc<Recorder>,
    stop: CancellationToken,
) {
    let mut client = Client::new(edge);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Stop first: a tick that is already due must not send after `stop_sending`.
            biased;
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let n = rec.next_id.fetch_add(1, Ordering::Relaxed);
        let phase = rec.phase();
        // Taken before sending: only a write acknowledged before this read began makes an
        // older answer stale.
        let acked = rec.acked();
        let sent = Instant::now();
        let answer = client.send(op.draft(n)).await;
        let done = Instant::now();
        let (outcome, stale) = match &answer {
            Ok((status, body)) => (
                Outcome::Status(*status),
                matches!(op, Op::ReadItem(_))
                    && *status == 200
                    && version_of(body).is_some_and(|v| v < acked),
            ),
            Err(outcome) => (*outcome, false),
        };
        rec.record(Sample {
            kind: op.kind(),
            phase,
            sent,
            done,
            outcome,
            stale,
        });
    }
}

async fn readiness_poller(edge: SocketAddr, rec: Arc<Recorder>, stop: CancellationToken) {
    let mut client = Client::new(edge);
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Stop first: a tick that is already due must not send after `stop_sending`.
            biased;
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let phase = rec.phase();
        let sent = Instant::now();
        let (status, label) = match client.send(get("/readyz")).await {
            Ok((status, body)) => (Some(status), readiness_label(status, &body)),
            Err(outcome) => (None, format!("{outcome:?}").to_lowercase()),
        };
        rec.record_readiness(phase, sent, status, label);
    }
}

// ---------------------------------------------------------------------------------------------
// Output.

/// One experiment's line.
#[derive(Debug, Serialize)]
struct Line {
    experiment: &'static str,
    config: Config,
    requests: u64,
    failures: Failures,
    failure_latency_ms: Latency,
    success_latency_ms: Latency,
    /// From the dependency being back; absent for `sigterm`.
    recovery: Option<Recovery>,
    /// Public reads answering an older version than the last PUT acknowledged before they
    /// were sent.
    stale_reads: u64,
    /// Successful public reads whose version was checked.
    reads_checked: u64,
    phases: Phases,
    by_kind: BTreeMap<&'static str, Count>,
    /// `/readyz` answers seen, by phase.
    readiness: Option<BTreeMap<&'static str, BTreeMap<String, u64>>>,
    details: serde_json::Value,
}

#[derive(Debug, Serialize)]
struct Config {
    defaults: &'static str,
    /// Every variable set (secrets shown as `(set)`).
    vars: BTreeMap<String, String>,
    fault: String,
    phase_s: f64,
    recovery_cap_s: f64,
}

impl Config {
    fn new(vars: &HashMap<String, String>, fault: impl Into<String>, phase: Duration) -> Self {
        Self {
            defaults: "README defaults, except the variables in `vars`",
            vars: vars
                .iter()
                .map(|(k, v)| {
                    let shown = if k.ends_with("_KEY") { "(set)" } else { v };
                    (k.clone(), shown.to_owned())
                })
                .collect(),
            fault: fault.into(),
            phase_s: phase.as_secs_f64(),
            recovery_cap_s: RECOVERY_CAP.as_secs_f64(),
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct Failures {
    total: u64,
    by_status: BTreeMap<u16, u64>,
    transport: u64,
    timeout: u64,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: Option<f64>,
    p99: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Recovery {
    /// By kind of request: until the first success of one sent after the restore (null: none
    /// within the cap).
    first_success_ms: BTreeMap<&'static str, Option<f64>>,
    /// Until every kind had succeeded again.
    all_kinds_ms: Option<f64>,
    readyz_200_ms: Option<f64>,
    readyz_ok_ms: Option<f64>,
    after_phase_s: f64,
}

#[derive(Debug, Default, Serialize)]
struct Count {
    requests: u64,
    failures: u64,
    stale_reads: u64,
}

#[derive(Debug, Default, Serialize)]
struct Phases {
    before: Count,
    during: Count,
    after: Count,
}

impl Phases {
    fn get(&mut self, phase: Phase) -> &mut Count {
        match phase {
            Phase::Before => &mut self.before,
            Phase::During => &mut self.during,
            Phase::After => &mut self.after,
        }
    }
}
