//! `portico-bench`: the one load generator of every Portico benchmark.
//!
//! Targets: HTTP/1.1 (`http`), gRPC unary (`grpc-unary`: Health/Check) and gRPC server
//! streaming (`grpc-stream`: Health/Watch, open → first message → close). Load: a fixed number
//! of connections each sending back to back (`--concurrency`), or a fixed arrival rate
//! (`--rate`) split into per-connection schedules, where latency runs from the *intended* send
//! time, so a stalled server cannot hide its queueing (coordinated omission). Each run prints
//! one line of JSON: throughput, p50/p90/p99/max and errors.
//!
//! `scenario healthz` measures the edge's `/healthz` against a bare hyper server in the same
//! run and prints both lines plus their ratio. `scenario faults` (module [`faults`]) rehearses
//! dependency outages under load.

// The scenarios that run the suite in this process (chat, healthz, content, auth) run it on the
// allocator the `portico` binary ships with by default (README Benchmarks), and so do their
// baselines.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod apikey;
mod compare;
mod faults;
mod shipped;
mod tls;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_proto::ratelimit::{rate_limit_service_client::RateLimitServiceClient, CheckRequest};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// `ADMIN_API_KEY` of the suites the scenarios start (the configuration needs ≥ 32 characters).
const BENCH_ADMIN_KEY: &str = "bench-admin-key-0123456789abcdef";

#[derive(Debug, Parser)]
#[command(name = "portico-bench", about = "Portico's load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// HTTP/1.1 GET against a URL.
    Http {
        /// Full URL, e.g. http://127.0.0.1:3000/healthz.
        #[arg(long)]
        url: String,
        #[command(flatten)]
        load: Load,
    },
    /// gRPC unary: grpc.health.v1.Health/Check.
    GrpcUnary {
        /// Server address, e.g. 127.0.0.1:50051.
        #[arg(long)]
        addr: SocketAddr,
        #[command(flatten)]
        load: Load,
    },
    /// gRPC unary: portico.ratelimit.v1.RateLimitService/Check (policy global, 1000 keys).
    GrpcCheck {
        /// Server address, e.g. 127.0.0.1:50054.
        #[arg(long)]
        addr: SocketAddr,
        #[command(flatten)]
        load: Load,
    },
    /// gRPC server streaming: grpc.health.v1.Health/Watch until the first message.
    GrpcStream {
        /// Server address, e.g. 127.0.0.1:50051.
        #[arg(long)]
        addr: SocketAddr,
        #[command(flatten)]
        load: Load,
    },
    /// A server answering every request with a fixed JSON body (the baselines of `scenario
    /// shipped`, run as a process of their own).
    #[command(hide = true)]
    ServeFixed {
        #[arg(long)]
        addr: SocketAddr,
        /// `healthz` (the edge's liveness bytes) or `chat` (a chat completion).
        #[arg(long)]
        answer: String,
        /// Milliseconds to wait before each answer (a provider's own latency).
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// A benchmark with its same-run baseline.
    Scenario {
        #[command(subcommand)]
        scenario: Scenario,
    },
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// The edge's /healthz against a bare hyper server answering the same bytes.
    Healthz {
        #[command(flatten)]
        load: Load,
    },
    /// RateLimitService.Check over gRPC: in memory against an empty unary RPC (Health/Check) on
    /// the same server; on Redis against `redis-benchmark` running the same script directly.
    /// Login throughput through the edge as a ratio of the raw Argon2id verify rate (same
    /// parameters, same run), and /healthz latency at a fixed rate during a login flood.
    Auth {
        /// Redis for lockouts and the denylist (unset: they live in the database).
        #[arg(long)]
        redis_url: Option<String>,
        #[command(flatten)]
        load: Load,
    },
    /// A cached `GET /api/v1/content/{slug}` through the edge against the edge's `/healthz`.
    Content {
        /// Redis for the cache (unset: in-process L1 only, as `cargo run`).
        #[arg(long)]
        redis_url: Option<String>,
        #[command(flatten)]
        load: Load,
    },
    /// Chat through the edge and the chat gateway to a fake provider, against the same fake
    /// called directly: added p50/p99 at a fixed rate, then resident memory around 100k requests.
    Chat {
        /// Requests through the gateway between the two memory readings.
        #[arg(long, default_value_t = 100_000)]
        requests: u64,
        /// Whitelist loopback, so the edge skips its rate-limit decisions (the gateway alone).
        #[arg(long)]
        whitelisted: bool,
        #[command(flatten)]
        load: Load,
    },
    /// What TLS costs: the edge's `/healthz` over HTTPS (keep-alive) against its plaintext
    /// listener, and a cached content GET with mTLS between edge and services against the
    /// plaintext hops; certificates made at start.
    Tls {
        #[command(flatten)]
        load: Load,
    },
    /// What an API key costs at the edge over a JWT (same run, same suite): `GET /v1/models`
    /// and a chat completion to a fake provider, with each credential.
    Apikey {
        /// Redis for the suite (the JWT denylist and the token budget live there; unset: the
        /// denylist is asked of auth, the budget kept in memory).
        #[arg(long)]
        redis_url: Option<String>,
        #[command(flatten)]
        load: Load,
    },
    /// Every row of issue 15 on the README's defaults (`portico serve` as shipped, JSON logs to a
    /// file): /healthz vs a bare hyper server, memory after a sign-up burst and logins, logins vs
    /// raw Argon2id, /healthz p99 during a login flood, chat vs the provider direct (c16, c1).
    Shipped(shipped::ShippedArgs),
    /// Resident memory of `portico serve` sampled through minutes of mixed traffic and a sign-up
    /// burst.
    Soak(shipped::SoakArgs),
    /// Two `portico` binaries (before/after a change) on the README's defaults, one at a time in
    /// alternating rounds: closed-loop /healthz and a cached content GET, median throughput of
    /// each and the ratio after/before against `--min-ratio`.
    Compare(compare::CompareArgs),
    /// Dependency outages under load (Redis killed, PostgreSQL cut, the LLM provider gone,
    /// SIGTERM): failures, their latency, recovery time and stale reads, one line each.
    Faults(faults::FaultArgs),
    Ratelimit {
        /// Redis for the second half.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
        #[command(flatten)]
        load: Load,
    },
}

/// How load is applied.
#[derive(Debug, Clone, Args)]
struct Load {
    /// Connections (HTTP) or concurrent calls (gRPC).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Requests per second across all connections; unset = as fast as each connection can.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Unmeasured warm-up seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
}

/// One run's result line.
#[derive(Debug, Serialize)]
struct Report {
    name: String,
    mode: &'static str,
    concurrency: usize,
    rate: Option<f64>,
    duration_s: f64,
    requests: u64,
    errors: u64,
    throughput_rps: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Clone)]
enum Target {
    Http {
        addr: SocketAddr,
        path: String,
        host: String,
        /// JSON bodies to POST, one per connection in turn; empty sends a GET.
        bodies: Arc<[Bytes]>,
        /// HTTPS with this client configuration (ALPN http/1.1), verifying `host`.
        tls: Option<Arc<portico_tls::rustls::ClientConfig>>,
    },
    /// HTTP/1.1 with an `Authorization` header: a GET, or a POST of `body`.
    Authed {
        addr: SocketAddr,
        path: String,
        host: String,
        authorization: http::HeaderValue,
        body: Option<Bytes>,
    },
    GrpcUnary(tonic::transport::Channel),
    GrpcStream(tonic::transport::Channel),
    GrpcCheck(tonic::transport::Channel),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Http { url, load } => {
            let target = http_target(&url)?;
            print(&run(&url, target, &load).await?)?;
        }
        Command::GrpcUnary { addr, load } => {
            let target = Target::GrpcUnary(grpc_channel(addr).await?);
            print(&run(&format!("grpc-unary {addr}"), target, &load).await?)?;
        }
        Command::GrpcCheck { addr, load } => {
            let target = Target::GrpcCheck(grpc_channel(addr).await?);
            print(&run(&format!("grpc-check {addr}"), target, &load).await?)?;
        }
        Command::GrpcStream { addr, load } => {
            let target = Target::GrpcStream(grpc_channel(addr).await?);
            print(&run(&format!("grpc-stream {addr}"), target, &load).await?)?;
        }
        Command::Scenario {
            scenario: Scenario::Healthz { load },
        } => healthz_scenario(&load).await?,
        Command::Scenario {
            scenario: Scenario::Ratelimit { redis_url, load },
        } => ratelimit_scenario(&redis_url, &load).await?,
        Command::Scenario {
            scenario: Scenario::Auth { redis_url, load },
        } => auth_scenario(redis_url, &load).await?,
        Command::Scenario {
            scenario: Scenario::Content { redis_url, load },
        } => content_scenario(redis_url, &load).await?,
        Command::Scenario {
            scenario:
                Scenario::Chat {
                    requests,
                    whitelisted,
                    load,
                },
        } => chat_scenario(requests, whitelisted, &load).await?,
        Command::ServeFixed {
            addr,
            answer,
            delay_ms,
        } => {
            let body = match answer.as_str() {
                "healthz" => shipped::HEALTHZ_ANSWER,
                "chat" => shipped::CHAT_ANSWER,
                other => anyhow::bail!("--answer {other}: healthz or chat"),
            };
            let listener = TcpListener::bind(addr).await?;
            serve_fixed(
                listener,
                Bytes::from_static(body),
                Duration::from_millis(delay_ms),
            )
            .await;
        }
        Command::Scenario {
            scenario: Scenario::Shipped(args),
        } => shipped::scenario(args).await?,
        Command::Scenario {
            scenario: Scenario::Soak(args),
        } => shipped::soak(args).await?,
        Command::Scenario {
            scenario: Scenario::Compare(args),
        } => compare::scenario(args).await?,
        Command::Scenario {
            scenario: Scenario::Faults(args),
        } => faults::run(args).await?,
        Command::Scenario {
            scenario: Scenario::Tls { load },
        } => tls::scenario(&load).await?,
        Command::Scenario {
            scenario: Scenario::Apikey { redis_url, load },
        } => apikey::scenario(redis_url, &load).await?,
    }
    Ok(())
}

fn print(report: &Report) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(report)?);
    Ok(())
}

fn http_target(url: &str) -> anyhow::Result<Target> {
    let uri: http::Uri = url.parse().context("--url")?;
    let authority = uri.authority().context("--url needs host:port")?.clone();
    let addr = tokio_lookup(authority.as_str())?;
    Ok(Target::Http {
        addr,
        path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        host: authority.to_string(),
        bodies: Arc::new([]),
        tls: None,
    })
}

fn tokio_lookup(authority: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs as _;
    authority
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {authority}"))
}

async fn grpc_channel(addr: SocketAddr) -> anyhow::Result<tonic::transport::Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?,
    )
}

/// Runs `load` against `target`: warm-up, then the measured window.
async fn run(name: &str, target: Target, load: &Load) -> anyhow::Result<Report> {
    if load.warmup > 0.0 {
        measure(target.clone(), load, Duration::from_secs_f64(load.warmup)).await?;
    }
    let window = Duration::from_secs_f64(load.duration);
    let (histogram, errors, elapsed) = measure(target, load, window).await?;
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(Report {
        name: name.to_owned(),
        mode: if load.rate.is_some() {
            "fixed-rate"
        } else {
            "fixed-concurrency"
        },
        concurrency: load.concurrency,
        rate: load.rate,
        duration_s: elapsed.as_secs_f64(),
        requests: histogram.len(),
        errors,
        throughput_rps: histogram.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: ms(0.50),
        p90_ms: ms(0.90),
        p99_ms: ms(0.99),
        max_ms: histogram.max() as f64 / 1000.0,
    })
}

async fn measure(
    target: Target,
    load: &Load,
    window: Duration,
) -> anyhow::Result<(Histogram<u64>, u64, Duration)> {
    let start = Instant::now();
    let deadline = start + window;
    let concurrency = load.concurrency.max(1);
    // Each connection keeps its own schedule: connection i sends at start + (i + k·n)/rate.
    let interval = load
        .rate
        .map(|rate| Duration::from_secs_f64(concurrency as f64 / rate));
    let mut workers = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let target = target.clone();
        let offset = load.rate.map_or(Duration::ZERO, |rate| {
            Duration::from_secs_f64(i as f64 / rate)
        });
        workers.push(tokio::spawn(worker(
            i,
            target,
            start + offset,
            interval,
            deadline,
        )));
    }
    let mut histogram = new_histogram()?;
    let mut errors = 0;
    for worker in workers {
        let (h, e) = worker.await??;
        histogram.add(h)?;
        errors += e;
    }
    Ok((histogram, errors, start.elapsed()))
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    // Microseconds from 1 µs to 60 s at 3 significant digits.
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

async fn worker(
    index: usize,
    target: Target,
    first: Instant,
    interval: Option<Duration>,
    deadline: Instant,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut histogram = new_histogram()?;
    let mut errors = 0u64;
    let mut connection = Connection::open(&target).await?.with_body(&target, index);
    let mut intended = first;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let sent_at = match interval {
            Some(interval) => {
                let slot = intended;
                intended += interval;
                if slot > now {
                    // Idle until the slot: the timer's wake-up slop (~1 ms) is not the
                    // server's latency, so measure from the actual send.
                    tokio::time::sleep_until(slot.into()).await;
                    Instant::now()
                } else {
                    // Behind schedule: the wait since the intended send *is* latency a real
                    // client would see (no coordinated omission).
                    slot
                }
            }
            None => now,
        };
        if sent_at >= deadline {
            break;
        }
        match connection.call(&target).await {
            Ok(()) => {
                let micros = sent_at.elapsed().as_micros().max(1) as u64;
                histogram.saturating_record(micros);
            }
            Err(_) => {
                errors += 1;
                connection = Connection::open(&target).await?.with_body(&target, index);
            }
        }
    }
    Ok((histogram, errors))
}

enum Connection {
    Http(
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        Option<Bytes>,
    ),
    Grpc(HealthClient<tonic::transport::Channel>),
    Check(RateLimitServiceClient<tonic::transport::Channel>, u64),
}

impl Connection {
    /// Connection `index` posts the `index`-th body (round robin): one caller per connection.
    fn with_body(self, target: &Target, index: usize) -> Self {
        match (self, target) {
            (Connection::Http(sender, _), Target::Http { bodies, .. }) if !bodies.is_empty() => {
                Connection::Http(sender, Some(bodies[index % bodies.len()].clone()))
            }
            (connection, _) => connection,
        }
    }

    async fn open(target: &Target) -> anyhow::Result<Self> {
        match target {
            Target::Http {
                addr, tls, host, ..
            } => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let sender = match tls {
                    None => {
                        let (sender, connection) =
                            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                        tokio::spawn(connection);
                        sender
                    }
                    Some(config) => {
                        let name = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
                        let name =
                            portico_tls::rustls::pki_types::ServerName::try_from(name)?.to_owned();
                        let stream =
                            portico_tls::tokio_rustls::TlsConnector::from(Arc::clone(config))
                                .connect(name, stream)
                                .await?;
                        let (sender, connection) =
                            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                        tokio::spawn(connection);
                        sender
                    }
                };
                Ok(Connection::Http(sender, None))
            }
            Target::Authed { addr, .. } => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                Ok(Connection::Http(sender, None))
            }
            Target::GrpcUnary(channel) | Target::GrpcStream(channel) => {
                Ok(Connection::Grpc(HealthClient::new(channel.clone())))
            }
            Target::GrpcCheck(channel) => Ok(Connection::Check(
                RateLimitServiceClient::new(channel.clone()),
                0,
            )),
        }
    }

    async fn call(&mut self, target: &Target) -> anyhow::Result<()> {
        match (self, target) {
            (Connection::Http(sender, body), Target::Http { path, host, .. }) => {
                sender.ready().await?;
                let request = match body {
                    Some(body) => http::Request::post(path.as_str())
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .header(http::header::HOST, host.as_str())
                        .body(Full::new(body.clone()))?,
                    None => http::Request::get(path.as_str())
                        .header(http::header::HOST, host.as_str())
                        .body(Full::new(Bytes::new()))?,
                };
                let response = sender.send_request(request).await?;
                let ok = response.status().is_success();
                response.into_body().collect().await?;
                anyhow::ensure!(ok, "non-2xx");
                Ok(())
            }
            (
                Connection::Http(sender, _),
                Target::Authed {
                    path,
                    host,
                    authorization,
                    body,
                    ..
                },
            ) => {
                sender.ready().await?;
                let request = match body {
                    Some(body) => http::Request::post(path.as_str())
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(body.clone())),
                    None => http::Request::get(path.as_str()).body(Full::new(Bytes::new())),
                };
                let mut request = request?;
                let headers = request.headers_mut();
                headers.insert(http::header::HOST, http::HeaderValue::from_str(host)?);
                headers.insert(http::header::AUTHORIZATION, authorization.clone());
                let response = sender.send_request(request).await?;
                let ok = response.status().is_success();
                response.into_body().collect().await?;
                anyhow::ensure!(ok, "non-2xx");
                Ok(())
            }
            (Connection::Grpc(client), Target::GrpcUnary(_)) => {
                client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
                Ok(())
            }
            (Connection::Grpc(client), Target::GrpcStream(_)) => {
                let mut stream = client
                    .watch(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?
                    .into_inner();
                stream
                    .message()
                    .await?
                    .context("stream ended before its first message")?;
                Ok(())
            }
            (Connection::Check(client, n), Target::GrpcCheck(_)) => {
                // Spread over 1000 keys like real clients; the same sequence in every run.
                *n = n
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let key = format!("10.0.{}.{}", (*n >> 40) % 4, (*n >> 50) % 250);
                let answer = client
                    .check(CheckRequest {
                        key,
                        policy: "global".into(),
                        cost: 1,
                        client_ip: String::new(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                anyhow::ensure!(answer.allowed && !answer.degraded, "refused or degraded");
                Ok(())
            }
            _ => anyhow::bail!("connection does not match target"),
        }
    }
}

/// The baseline: a bare hyper server answering the bytes the edge's liveness answers.
async fn bare_server() -> anyhow::Result<SocketAddr> {
    fixed_server(Bytes::from_static(
        br#"{"status":"ok","timestamp":"2026-11-22T00:00:00.000Z","uptime":1.0,"version":"0.1.0"}"#,
    ))
    .await
}

/// A hyper server answering every request with `body` (JSON).
async fn fixed_server(body: Bytes) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve_fixed(listener, body, Duration::ZERO));
    Ok(addr)
}

/// Answers every request on `listener` with `body` (JSON) after `delay`, until the process ends.
async fn serve_fixed(listener: TcpListener, body: Bytes, delay: Duration) {
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
        TokioExecutor::new(),
    ));
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_request| {
                let body = body.clone();
                async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut response = http::Response::new(Full::new(body));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn healthz_scenario(load: &Load) -> anyhow::Result<()> {
    let data = std::env::temp_dir().join(format!("portico-bench-{}.db", std::process::id()));
    let vars = suite_vars(&[(
        "DATABASE_URL",
        format!("sqlite://{}?mode=rwc", data.display()),
    )]);
    let settings = portico_config::Settings::from_source(&vars)?;
    let suite = portico::Suite::start(settings).await?;
    let bare = bare_server().await?;

    let baseline = run(
        "bare-hyper /healthz",
        http_target(&format!("http://{bare}/"))?,
        load,
    )
    .await?;
    let subject = run(
        "edge /healthz",
        http_target(&format!("http://{}/healthz", suite.edge_addr))?,
        load,
    )
    .await?;
    print(&baseline)?;
    print(&subject)?;
    println!(
        "{}",
        serde_json::json!({
            "scenario": "healthz",
            "throughput_ratio": subject.throughput_rps / baseline.throughput_rps,
            "p99_ratio": subject.p99_ms / baseline.p99_ms.max(0.001),
            "errors": subject.errors + baseline.errors,
        })
    );
    suite.shutdown().await;
    let _ = std::fs::remove_file(&data);
    Ok(())
}

fn suite_vars(extra: &[(&str, String)]) -> std::collections::HashMap<String, String> {
    let mut vars: std::collections::HashMap<String, String> = [
        ("EDGE_ADDR", "127.0.0.1:0"),
        ("AUTH_ADDR", "127.0.0.1:0"),
        ("CONTENT_ADDR", "127.0.0.1:0"),
        ("CHAT_ADDR", "127.0.0.1:0"),
        ("RATELIMIT_ADDR", "127.0.0.1:0"),
        ("LOG_LEVEL", "error"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    vars.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    vars
}

async fn start_ratelimit(
    extra: &[(&str, String)],
) -> anyhow::Result<(SocketAddr, tokio_util::sync::CancellationToken)> {
    let settings = portico_config::Settings::from_source(&suite_vars(extra))?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = portico_ratelimit::serve(&settings, listener, shutdown.clone()).await?;
    Ok((handle.local_addr, shutdown))
}

async fn ratelimit_scenario(redis_url: &str, load: &Load) -> anyhow::Result<()> {
    // Limits far above what a run can spend: every decision does the full work and is allowed.
    let unlimited = [
        ("RATE_LIMIT_GLOBAL_MAX", "10000000".to_owned()),
        ("RATE_LIMIT_GLOBAL_WINDOW", "1s".to_owned()),
    ];

    let (memory, stop_memory) = start_ratelimit(&unlimited).await?;
    let channel = grpc_channel(memory).await?;
    let empty = run(
        "memory: empty unary (Health/Check)",
        Target::GrpcUnary(channel.clone()),
        load,
    )
    .await?;
    let checks = run(
        "memory: RateLimitService/Check",
        Target::GrpcCheck(channel),
        load,
    )
    .await?;
    stop_memory.cancel();
    print(&empty)?;
    print(&checks)?;

    let prefix = format!("bench:{}:", std::process::id());
    let mut redis_vars = unlimited.to_vec();
    redis_vars.push(("REDIS_URL", redis_url.to_owned()));
    redis_vars.push(("REDIS_KEY_PREFIX", prefix.clone()));
    let (redis_addr, stop_redis) = start_ratelimit(&redis_vars).await?;
    let redis_checks = run(
        "redis: RateLimitService/Check",
        Target::GrpcCheck(grpc_channel(redis_addr).await?),
        load,
    )
    .await?;
    stop_redis.cancel();
    let direct = redis_benchmark(redis_url, &prefix, load).await?;
    print(&redis_checks)?;
    println!("{}", serde_json::to_string(&direct)?);

    println!(
        "{}",
        serde_json::json!({
            "scenario": "ratelimit",
            "memory_throughput_ratio": checks.throughput_rps / empty.throughput_rps,
            "memory_p99_ms": checks.p99_ms,
            "empty_unary_p99_ms": empty.p99_ms,
            "redis_throughput_ratio": redis_checks.throughput_rps / direct["throughput_rps"].as_f64().unwrap_or(f64::NAN),
            "redis_p99_ms": redis_checks.p99_ms,
            "errors": empty.errors + checks.errors + redis_checks.errors,
        })
    );
    Ok(())
}

/// `redis-benchmark` running the service's own script by EVALSHA over 1000 keys, with the same
/// concurrency, straight against Redis: the ceiling a gRPC decision can approach.
async fn redis_benchmark(
    redis_url: &str,
    prefix: &str,
    load: &Load,
) -> anyhow::Result<serde_json::Value> {
    let url: http::Uri = redis_url.replace("redis://", "http://").parse()?;
    let host = url.host().unwrap_or("127.0.0.1").to_owned();
    let port = url.port_u16().unwrap_or(6379).to_string();
    let script = include_str!("../../services/ratelimit/src/gcra.lua");
    let sha = tokio::process::Command::new("redis-cli")
        .args(["-h", &host, "-p", &port, "SCRIPT", "LOAD", script])
        .output()
        .await
        .context("redis-cli is needed for the Redis baseline")?;
    let sha = String::from_utf8(sha.stdout)?.trim().to_owned();
    anyhow::ensure!(sha.len() == 40, "SCRIPT LOAD failed: {sha}");
    let requests = ((load.duration * 30_000.0) as u64).max(10_000).to_string();
    let key = format!("{prefix}ratelimit:global:__rand_int__");
    let output = tokio::process::Command::new("redis-benchmark")
        .args([
            "-h",
            &host,
            "-p",
            &port,
            "-c",
            &load.concurrency.to_string(),
            "-n",
            &requests,
            "-r",
            "1000",
            "-q",
        ])
        .args(["EVALSHA", &sha, "1", &key, "100", "10000000", "1", ""])
        .output()
        .await
        .context("redis-benchmark is needed for the Redis baseline")?;
    let text = String::from_utf8_lossy(&output.stdout).replace('\r', "\n");
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("requests per second"))
        .with_context(|| format!("unexpected redis-benchmark output: {text}"))?;
    let rps: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("cannot read requests per second from {line:?}"))?;
    let p50 = line
        .split("p50=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok());
    Ok(serde_json::json!({
        "name": "redis-benchmark EVALSHA gcra.lua",
        "concurrency": load.concurrency,
        "requests": requests,
        "throughput_rps": rps,
        "p50_ms": p50,
    }))
}

/// Verifies per second of Argon2id at the service's parameters on every core, for `seconds`.
fn raw_argon2_rate(seconds: f64) -> anyhow::Result<f64> {
    use argon2::{
        password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString},
        Algorithm, Argon2, Params, Version,
    };
    let params = Params::new(19_456, 2, 1, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let salt = SaltString::encode_b64(b"benchmark-salt-1").map_err(|e| anyhow::anyhow!("{e}"))?;
    let hash = argon
        .hash_password(b"correct horse battery", &salt)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_string();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let done: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cores)
            .map(|_| {
                let argon = argon.clone();
                let hash = hash.clone();
                scope.spawn(move || {
                    let parsed = PasswordHash::new(&hash).ok();
                    let mut n = 0;
                    while Instant::now() < deadline {
                        if let Some(parsed) = &parsed {
                            let _ = argon.verify_password(b"correct horse battery", parsed);
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    });
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

async fn auth_scenario(redis_url: Option<String>, load: &Load) -> anyhow::Result<()> {
    let data = std::env::temp_dir().join(format!("portico-bench-auth-{}.db", std::process::id()));
    let key = std::env::temp_dir().join(format!("portico-bench-key-{}.pem", std::process::id()));
    let _ = std::fs::remove_file(&key);
    portico_auth::keys::write_new_key(&key.display().to_string())
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut extra = vec![
        (
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", data.display()),
        ),
        ("JWT_SIGNING_KEY_FILE", key.display().to_string()),
        ("RATE_LIMIT_GLOBAL_MAX", "10000000".into()),
        ("RATE_LIMIT_AUTH_MAX", "10000000".into()),
        ("RATE_LIMIT_GLOBAL_WINDOW", "1s".into()),
    ];
    if let Some(url) = redis_url {
        extra.push(("REDIS_URL", url));
        extra.push(("REDIS_KEY_PREFIX", format!("bench:{}:", std::process::id())));
    }
    let vars = suite_vars(&extra);
    let suite = portico::Suite::start(portico_config::Settings::from_source(&vars)?).await?;
    let edge = suite.edge_addr;
    // One user per connection, as real logins come from many users.
    let credentials: Arc<[Bytes]> = (0..load.concurrency.max(1))
        .map(|i| {
            Bytes::from(format!(
                r#"{{"email":"bench{i}@example.com","password":"correct horse battery"}}"#
            ))
        })
        .collect();
    let target = |path: &str, bodies: Arc<[Bytes]>| Target::Http {
        addr: edge,
        path: path.into(),
        host: edge.to_string(),
        bodies,
        tls: None,
    };
    let register = target("/api/v1/auth/register", credentials.clone());
    for i in 0..credentials.len() {
        Connection::open(&register)
            .await?
            .with_body(&register, i)
            .call(&register)
            .await?;
    }

    let raw = raw_argon2_rate(load.duration)?;
    let login = target("/api/v1/auth/login", credentials);
    let logins = run("edge POST /api/v1/auth/login", login.clone(), load).await?;

    // /healthz at a fixed, modest rate while the same login flood saturates hashing.
    let flood = {
        let load = load.clone();
        let login = login.clone();
        tokio::spawn(async move { run("login flood", login, &load).await })
    };
    let probe = Load {
        concurrency: 4,
        rate: Some(200.0),
        duration: load.duration,
        warmup: load.warmup,
    };
    let healthz = run(
        "edge /healthz during the login flood",
        target("/healthz", Arc::new([])),
        &probe,
    )
    .await?;
    let flood = flood.await??;

    println!(
        "{}",
        serde_json::json!({"name": "raw argon2id verify (m=19456,t=2,p=1), every core", "throughput_rps": raw})
    );
    print(&logins)?;
    print(&flood)?;
    print(&healthz)?;
    println!(
        "{}",
        serde_json::json!({
            "scenario": "auth",
            "login_to_raw_verify_ratio": logins.throughput_rps / raw,
            "healthz_p99_ms_during_flood": healthz.p99_ms,
            "errors": logins.errors + flood.errors + healthz.errors,
        })
    );
    suite.shutdown().await;
    let _ = std::fs::remove_file(&data);
    let _ = std::fs::remove_file(&key);
    Ok(())
}

async fn content_scenario(redis_url: Option<String>, load: &Load) -> anyhow::Result<()> {
    let data =
        std::env::temp_dir().join(format!("portico-bench-content-{}.db", std::process::id()));
    let mut extra = vec![
        (
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", data.display()),
        ),
        ("ADMIN_API_KEY", BENCH_ADMIN_KEY.to_owned()),
        ("RATE_LIMIT_GLOBAL_MAX", "10000000".into()),
        ("RATE_LIMIT_GLOBAL_WINDOW", "1s".into()),
    ];
    if let Some(url) = &redis_url {
        extra.push(("REDIS_URL", url.clone()));
        extra.push(("REDIS_KEY_PREFIX", format!("bench:{}:", std::process::id())));
    }
    let suite =
        portico::Suite::start(portico_config::Settings::from_source(&suite_vars(&extra))?).await?;
    let edge = suite.edge_addr;
    let created = reqwest_free_post(
        edge,
        "/api/v1/admin/content",
        r#"{"slug":"benchmark-article","title":"Benchmark","body":"A published article of a realistic size for a landing page.","tags":["bench"],"status":"published"}"#,
    )
    .await?;
    anyhow::ensure!(created == 201, "creating the article answered {created}");

    let healthz = run(
        "edge /healthz",
        http_target(&format!("http://{edge}/healthz"))?,
        load,
    )
    .await?;
    let content = run(
        "edge GET /api/v1/content/benchmark-article (cached)",
        http_target(&format!("http://{edge}/api/v1/content/benchmark-article"))?,
        load,
    )
    .await?;
    print(&healthz)?;
    print(&content)?;
    println!(
        "{}",
        serde_json::json!({
            "scenario": "content",
            "cache": if redis_url.is_some() { "redis+l1" } else { "l1" },
            "throughput_ratio_to_healthz": content.throughput_rps / healthz.throughput_rps,
            "content_p99_ms": content.p99_ms,
            "errors": healthz.errors + content.errors,
        })
    );
    suite.shutdown().await;
    let _ = std::fs::remove_file(&data);
    Ok(())
}

/// One admin POST over a fresh HTTP/1.1 connection; returns the status code.
async fn reqwest_free_post(
    edge: SocketAddr,
    path: &str,
    json: &'static str,
) -> anyhow::Result<u16> {
    let stream = TcpStream::connect(edge).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::post(path)
        .header(http::header::HOST, edge.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-admin-key", BENCH_ADMIN_KEY)
        .body(Full::new(Bytes::from_static(json.as_bytes())))?;
    let response = sender.send_request(request).await?;
    Ok(response.status().as_u16())
}

async fn chat_scenario(requests: u64, whitelisted: bool, load: &Load) -> anyhow::Result<()> {
    anyhow::ensure!(
        load.rate.is_some(),
        "the chat scenario measures added latency at a fixed rate: pass --rate"
    );
    let provider = fixed_server(Bytes::from_static(
        br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"A short answer of a few words."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}"#,
    ))
    .await?;
    let data = std::env::temp_dir().join(format!("portico-bench-chat-{}.db", std::process::id()));
    let extra = [
        (
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", data.display()),
        ),
        ("LLM_BASE_URL", format!("http://{provider}/v1")),
        ("LLM_MODEL", "bench".to_owned()),
        ("RATE_LIMIT_GLOBAL_MAX", "10000000".into()),
        ("RATE_LIMIT_GLOBAL_WINDOW", "1s".into()),
        ("RATE_LIMIT_CAPACITY", "10000000".into()),
        ("RATE_LIMIT_REFILL_RATE", "1000000".into()),
    ];
    let mut extra = extra.to_vec();
    if whitelisted {
        // Isolates the gateway's own cost from the edge's rate-limit hop.
        extra.push(("RATE_LIMIT_WHITELIST", "127.0.0.1/32".into()));
    }
    let suite =
        portico::Suite::start(portico_config::Settings::from_source(&suite_vars(&extra))?).await?;
    let edge = suite.edge_addr;
    let body: Arc<[Bytes]> = Arc::new([Bytes::from_static(
        br#"{"model":"bench","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say something short."}],"max_tokens":32}"#,
    )]);
    let target = |addr: SocketAddr| Target::Http {
        addr,
        path: "/v1/chat/completions".into(),
        host: addr.to_string(),
        bodies: body.clone(),
        tls: None,
    };
    let direct = run("fake provider, direct", target(provider), load).await?;
    let gateway = run("edge -> chat-gateway -> fake provider", target(edge), load).await?;
    print(&direct)?;
    print(&gateway)?;
    // The second row: an agent's request (tools, tool_choice, a tool round trip, content parts),
    // which the gateway passes through as JSON.
    let tools_body: Arc<[Bytes]> = Arc::new([Bytes::from_static(
        br#"{"model":"bench","messages":[{"role":"system","content":"Use the tools."},{"role":"user","content":[{"type":"text","text":"Weather in Oslo and Bergen?"}]},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"weather","arguments":"{\"city\":\"Oslo\"}"}}]},{"role":"tool","tool_call_id":"call_1","content":"rain, 12 C"}],"tools":[{"type":"function","function":{"name":"weather","description":"Current weather","parameters":{"type":"object","properties":{"city":{"type":"string"},"unit":{"type":"string","enum":["c","f"]}},"required":["city"]}}},{"type":"function","function":{"name":"forecast","parameters":{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},"required":["city"]}}}],"tool_choice":"auto","parallel_tool_calls":true,"temperature":0.2,"max_completion_tokens":64}"#,
    )]);
    let tools_target = |addr: SocketAddr| Target::Http {
        addr,
        path: "/v1/chat/completions".into(),
        host: addr.to_string(),
        bodies: tools_body.clone(),
        tls: None,
    };
    let direct_tools = run("fake provider, direct, tools", tools_target(provider), load).await?;
    let gateway_tools = run(
        "edge -> chat-gateway -> fake provider, tools",
        tools_target(edge),
        load,
    )
    .await?;
    print(&direct_tools)?;
    print(&gateway_tools)?;

    // Memory: read once warm, again after `requests` more calls as fast as they go.
    let flood = Load {
        rate: None,
        warmup: 0.0,
        duration: 5.0,
        ..load.clone()
    };
    let before = shipped::resident_mib(std::process::id());
    let mut sent = 0;
    let mut errors = 0;
    while sent < requests {
        let report = run("flood", target(edge), &flood).await?;
        sent += report.requests;
        errors += report.errors;
    }
    let after = shipped::resident_mib(std::process::id());
    println!(
        "{}",
        serde_json::json!({
            "scenario": "chat",
            "rate_limited": !whitelisted,
            "rate": load.rate,
            "added_p50_ms": gateway.p50_ms - direct.p50_ms,
            "added_p99_ms": gateway.p99_ms - direct.p99_ms,
            "p99_ratio": gateway.p99_ms / direct.p99_ms.max(0.001),
            "tools_added_p50_ms": gateway_tools.p50_ms - direct_tools.p50_ms,
            "tools_added_p99_ms": gateway_tools.p99_ms - direct_tools.p99_ms,
            "throughput_ratio": gateway.throughput_rps / direct.throughput_rps.max(0.001),
            "errors": direct.errors + gateway.errors + direct_tools.errors + gateway_tools.errors + errors,
            "memory_requests": sent,
            "rss_before_mib": before,
            "rss_after_mib": after,
        })
    );
    suite.shutdown().await;
    let _ = std::fs::remove_file(&data);
    Ok(())
}
