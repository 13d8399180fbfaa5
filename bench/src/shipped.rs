//! `scenario shipped` and `scenario soak`: Portico as the README ships it. Both run the real
//! `portico serve` binary in a directory of its own with nothing from the caller's environment —
//! the README's defaults (`LOG_LEVEL=info`, JSON logs, here to a file; SQLite under `./data`;
//! in-memory limits and cache) — plus only the variables printed in the `configuration` line:
//! listen addresses, the fake LLM provider (`LLM_BASE_URL`), and rate limits raised so the load
//! is measured rather than refused. Baselines run in the same run: a bare hyper server and the fake
//! provider as processes of their own (`portico-bench serve-fixed`), and raw Argon2id in this
//! process with a reused buffer.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;

use crate::{print, run, Load, Target};

/// The variables added to the README's defaults, printed with every run.
pub(crate) const RAISED_LIMITS: [(&str, &str); 5] = [
    ("RATE_LIMIT_GLOBAL_MAX", "10000000"),
    ("RATE_LIMIT_GLOBAL_WINDOW", "1s"),
    ("RATE_LIMIT_AUTH_MAX", "10000000"),
    ("RATE_LIMIT_CAPACITY", "10000000"),
    ("RATE_LIMIT_REFILL_RATE", "1000000"),
];

const PASSWORD: &str = "correct horse battery";

/// The latency of the second fake provider (see the chat rows).
const SLOW_PROVIDER_MS: u64 = 20;

/// The fake provider's answer (a short completion with usage).
pub const CHAT_ANSWER: &[u8] = br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"A short answer of a few words."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}"#;

const CHAT_REQUEST: &[u8] = br#"{"model":"bench","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say something short."}],"max_tokens":32}"#;

/// The bytes the edge's liveness answers, for the bare server.
pub const HEALTHZ_ANSWER: &[u8] =
    br#"{"status":"ok","timestamp":"2026-11-22T00:00:00.000Z","uptime":1.0,"version":"0.1.0"}"#;

/// Options of `scenario shipped`.
#[derive(Debug, Clone, Args)]
pub struct ShippedArgs {
    /// The `portico` binary to run.
    #[arg(long, default_value = "target/release/portico")]
    portico: PathBuf,
    /// Measured seconds per row.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Accounts registered in the sign-up burst (the memory row).
    #[arg(long, default_value_t = 1000)]
    signups: usize,
    /// Logins before the second memory reading.
    #[arg(long, default_value_t = 10_000)]
    logins: u64,
    /// A few seconds per row and a small burst: checks the tool, not the numbers (CI).
    #[arg(long)]
    smoke: bool,
}

/// Options of `scenario soak`.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// The `portico` binary to run.
    #[arg(long, default_value = "target/release/portico")]
    portico: PathBuf,
    /// Length of the mixed traffic, in seconds (600 = the 10-minute soak).
    #[arg(long, default_value_t = 600.0)]
    seconds: f64,
    /// Accounts registered in the sign-up burst, a third of the way in.
    #[arg(long, default_value_t = 1000)]
    signups: usize,
}

/// A running `portico serve` with its own directory and log file.
pub(crate) struct Portico {
    child: tokio::process::Child,
    dir: PathBuf,
    pub(crate) edge: SocketAddr,
    pid: u32,
}

impl Portico {
    pub(crate) async fn start(bin: &Path, extra: &[(&str, String)]) -> anyhow::Result<Self> {
        let bin = std::fs::canonicalize(bin).with_context(|| {
            format!(
                "{} not found: build it with `cargo build --release -p portico` or pass --portico",
                bin.display()
            )
        })?;
        let dir = std::env::temp_dir().join(format!(
            "portico-bench-shipped-{}-{}",
            std::process::id(),
            crate::faults::unique()
        ));
        std::fs::create_dir_all(&dir)?;
        let edge: SocketAddr = format!("127.0.0.1:{}", crate::faults::free_port()?).parse()?;
        let mut vars: HashMap<String, String> = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        vars.insert("EDGE_ADDR".into(), edge.to_string());
        for name in ["AUTH_ADDR", "CONTENT_ADDR", "CHAT_ADDR", "RATELIMIT_ADDR"] {
            vars.insert(name.into(), "127.0.0.1:0".into());
        }
        let log = std::fs::File::create(dir.join("portico.log"))?;
        let mut child = tokio::process::Command::new(&bin)
            .arg("serve")
            .env_clear()
            .envs(&vars)
            .current_dir(&dir)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        crate::faults::wait_ready(edge, Some(&mut child)).await?;
        let pid = child.id().context("portico exited at once")?;
        Ok(Self {
            child,
            dir,
            edge,
            pid,
        })
    }

    /// Resident memory of the whole process, in MiB.
    fn rss_mib(&self) -> f64 {
        resident_mib(self.pid)
    }

    /// Lines in its log file (what the default logging wrote).
    fn log_lines(&self) -> usize {
        std::fs::read(self.dir.join("portico.log"))
            .map(|bytes| bytes.iter().filter(|b| **b == b'\n').count())
            .unwrap_or(0)
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `VmRSS` of process `pid`, in MiB (0 when it cannot be read).
pub fn resident_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmRSS:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A fixed-answer HTTP server as a process of its own (this binary's `serve-fixed`), so a
/// baseline does not share the load generator's runtime.
struct FixedServer {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl FixedServer {
    async fn start(answer: &str) -> anyhow::Result<Self> {
        Self::start_delayed(answer, 0).await
    }

    async fn start_delayed(answer: &str, delay_ms: u64) -> anyhow::Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{}", crate::faults::free_port()?).parse()?;
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .args([
                "serve-fixed",
                "--addr",
                &addr.to_string(),
                "--answer",
                answer,
            ])
            .args(["--delay-ms", &delay_ms.to_string()])
            .kill_on_drop(true)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "serve-fixed did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { child, addr })
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

pub(crate) fn get(addr: SocketAddr, path: &str) -> Target {
    Target::Http {
        addr,
        path: path.into(),
        host: addr.to_string(),
        bodies: Arc::new([]),
        tls: None,
    }
}

fn post(addr: SocketAddr, path: &str, bodies: Arc<[Bytes]>) -> Target {
    Target::Http {
        addr,
        path: path.into(),
        host: addr.to_string(),
        bodies,
        tls: None,
    }
}

fn accounts(range: std::ops::Range<usize>) -> Arc<[Bytes]> {
    range
        .map(|i| {
            Bytes::from(format!(
                r#"{{"email":"shipped{i}@example.com","password":"{PASSWORD}"}}"#
            ))
        })
        .collect()
}

/// Registers every account in `bodies`, `concurrency` at a time; returns the failures.
async fn register_all(edge: SocketAddr, bodies: &[Bytes], concurrency: usize) -> usize {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bodies: Arc<[Bytes]> = bodies.into();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let next = Arc::clone(&next);
            let bodies = Arc::clone(&bodies);
            tokio::spawn(async move {
                let mut failed = 0;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else {
                        return failed;
                    };
                    let target = post(edge, "/api/v1/auth/register", Arc::new([body.clone()]));
                    let ok = match crate::Connection::open(&target).await {
                        Ok(connection) => {
                            connection.with_body(&target, 0).call(&target).await.is_ok()
                        }
                        Err(_) => false,
                    };
                    failed += usize::from(!ok);
                }
            })
        })
        .collect();
    let mut failed = 0;
    for worker in workers {
        failed += worker.await.unwrap_or(1);
    }
    failed
}

/// Argon2id verifies per second at the service's parameters, one thread per core, each in its
/// own reused block buffer (as the service's pool does), for `seconds`.
pub fn raw_argon2_rate(seconds: f64) -> anyhow::Result<f64> {
    use argon2::{Algorithm, Argon2, Block, Params, Version};
    let params = Params::new(19_456, 2, 1, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let done: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cores)
            .map(|_| {
                let argon = argon.clone();
                let blocks = params.block_count();
                scope.spawn(move || {
                    let mut memory = vec![Block::new(); blocks];
                    let mut out = [0u8; 32];
                    let mut n = 0;
                    while Instant::now() < deadline {
                        let _ = argon.hash_password_into_with_memory(
                            PASSWORD.as_bytes(),
                            b"benchmark-salt-16",
                            &mut out,
                            &mut memory,
                        );
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

fn configuration(extra: &[(&str, String)]) -> serde_json::Value {
    serde_json::json!({
        "configuration": "README defaults (portico serve; LOG_LEVEL=info, LOG_FORMAT=json written to a file; SQLite under ./data; in-memory limits and cache) plus only these variables",
        "added": extra.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "cores": std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    a / b.max(f64::MIN_POSITIVE)
}

/// One summary line per row: what was measured, against what, and the target.
fn row(name: &str, value: f64, target: &str, met: bool) {
    println!(
        "{}",
        serde_json::json!({"row": name, "value": (value * 1000.0).round() / 1000.0, "target": target, "met": met})
    );
}

/// `scenario shipped`.
pub async fn scenario(args: ShippedArgs) -> anyhow::Result<()> {
    let (duration, signups, logins) = if args.smoke {
        (1.0, 16, 64)
    } else {
        (args.duration, args.signups.max(64), args.logins)
    };
    let load = |concurrency: usize| Load {
        concurrency,
        rate: None,
        duration,
        warmup: (duration / 5.0).min(1.0),
    };
    let provider = FixedServer::start("chat").await?;
    let bare = FixedServer::start("healthz").await?;
    let mut extra: Vec<(&str, String)> = RAISED_LIMITS
        .iter()
        .map(|(k, v)| (*k, (*v).to_owned()))
        .collect();
    extra.push(("LLM_BASE_URL", format!("http://{}/v1", provider.addr)));
    extra.push(("LLM_MODEL", "bench".to_owned()));
    println!("{}", configuration(&extra));
    let portico = Portico::start(&args.portico, &extra).await?;
    let edge = portico.edge;

    // Memory: idle, after the sign-up burst, after the logins.
    let idle = portico.rss_mib();
    let burst = Instant::now();
    let failed = register_all(edge, &accounts(0..signups), 16).await;
    anyhow::ensure!(failed == 0, "{failed} of {signups} sign-ups failed");
    let burst = burst.elapsed();
    let after_signups = portico.rss_mib();

    // Logins: 64 accounts over 16 connections against raw Argon2id in this process.
    let raw = raw_argon2_rate(duration)?;
    let login = post(edge, "/api/v1/auth/login", accounts(0..64));
    let logins_row = run(
        "edge POST /api/v1/auth/login, c16",
        login.clone(),
        &load(16),
    )
    .await?;
    let mut logged_in = logins_row.requests;
    while logged_in < logins {
        let chunk = Load {
            warmup: 0.0,
            duration: (((logins - logged_in) as f64) / logins_row.throughput_rps.max(1.0))
                .clamp(0.5, 10.0),
            ..load(16)
        };
        logged_in += run("logins", login.clone(), &chunk).await?.requests;
    }
    let after_logins = portico.rss_mib();

    // /healthz, unthrottled over 4 connections, while logins saturate the CPU.
    let flood = {
        let login = login.clone();
        let flood_load = Load {
            warmup: 0.0,
            duration: duration + 1.0,
            ..load(16)
        };
        tokio::spawn(async move { run("login flood", login, &flood_load).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = run(
        "edge /healthz, c4, during the login flood",
        get(edge, "/healthz"),
        &Load {
            warmup: 0.0,
            ..load(4)
        },
    )
    .await?;
    let flood = flood.await??;

    // /healthz against the bare server, 64 connections.
    let bare_row = run("bare hyper /healthz, c64", get(bare.addr, "/"), &load(64)).await?;
    let lines_before = portico.log_lines();
    let healthz = run("edge /healthz, c64", get(edge, "/healthz"), &load(64)).await?;
    let lines_written = portico.log_lines().saturating_sub(lines_before);

    // Chat, non-streaming, through the edge against the provider direct.
    let chat_body: Arc<[Bytes]> = Arc::new([Bytes::from_static(CHAT_REQUEST)]);
    let chat = chat_body.clone();
    let direct_16 = run(
        "fake provider direct, c16",
        post(provider.addr, "/v1/chat/completions", chat.clone()),
        &load(16),
    )
    .await?;
    let edge_16 = run(
        "edge -> chat-gateway -> fake provider, c16",
        post(edge, "/v1/chat/completions", chat.clone()),
        &load(16),
    )
    .await?;
    let direct_1 = run(
        "fake provider direct, c1",
        post(provider.addr, "/v1/chat/completions", chat.clone()),
        &load(1),
    )
    .await?;
    let edge_1 = run(
        "edge -> chat-gateway -> fake provider, c1",
        post(edge, "/v1/chat/completions", chat_body.clone()),
        &load(1),
    )
    .await?;
    // The chat benchmark's row (issue 13): a fixed 1000 req/s over 16 connections.
    let at_rate = Load {
        rate: Some(1000.0),
        ..load(16)
    };
    let direct_rate = run(
        "fake provider direct, 1000 req/s over 16 connections",
        post(provider.addr, "/v1/chat/completions", chat_body.clone()),
        &at_rate,
    )
    .await?;
    let edge_rate = run(
        "edge -> chat-gateway -> fake provider, 1000 req/s over 16 connections",
        post(edge, "/v1/chat/completions", chat_body.clone()),
        &at_rate,
    )
    .await?;
    let end = portico.rss_mib();
    portico.stop().await;

    // The c16 ratio once more against a provider that takes SLOW_PROVIDER_MS to answer, as every
    // real one does (tens of milliseconds at the very least): the same suite, its own process.
    let slow = FixedServer::start_delayed("chat", SLOW_PROVIDER_MS).await?;
    let mut slow_extra = extra.clone();
    for (name, value) in &mut slow_extra {
        if *name == "LLM_BASE_URL" {
            *value = format!("http://{}/v1", slow.addr);
        }
    }
    let slow_portico = Portico::start(&args.portico, &slow_extra).await?;
    let direct_slow = run(
        &format!("fake provider direct ({SLOW_PROVIDER_MS} ms), c16"),
        post(slow.addr, "/v1/chat/completions", chat_body.clone()),
        &load(16),
    )
    .await?;
    let edge_slow = run(
        &format!("edge -> chat-gateway -> fake provider ({SLOW_PROVIDER_MS} ms), c16"),
        post(slow_portico.edge, "/v1/chat/completions", chat_body.clone()),
        &load(16),
    )
    .await?;
    slow_portico.stop().await;
    slow.stop().await;

    for report in [
        &logins_row,
        &flood,
        &during,
        &bare_row,
        &healthz,
        &direct_16,
        &edge_16,
        &direct_1,
        &edge_1,
        &direct_rate,
        &edge_rate,
        &direct_slow,
        &edge_slow,
    ] {
        print(report)?;
    }
    println!(
        "{}",
        serde_json::json!({"name": "raw argon2id (m=19456,t=2,p=1), reused buffer, every core, this process", "throughput_rps": raw})
    );
    println!(
        "{}",
        serde_json::json!({
            "name": "memory (VmRSS of portico serve)",
            "idle_mib": idle,
            "after_signups_mib": after_signups,
            "signups": signups,
            "signup_seconds": burst.as_secs_f64(),
            "after_logins_mib": after_logins,
            "logins": logged_in,
            "end_mib": end,
            "log_lines_during_the_c64_healthz_row": lines_written,
        })
    );
    let healthz_ratio = ratio(healthz.throughput_rps, bare_row.throughput_rps);
    row(
        "edge /healthz vs bare hyper, c64 (throughput ratio)",
        healthz_ratio,
        ">= 0.8",
        healthz_ratio >= 0.8,
    );
    row(
        &format!("memory after {signups} sign-ups and {logged_in} logins (MiB)"),
        after_logins,
        "<= 80",
        after_logins <= 80.0,
    );
    let login_ratio = ratio(logins_row.throughput_rps, raw);
    row(
        "logins c16 vs raw Argon2id (throughput ratio)",
        login_ratio,
        ">= 0.92",
        login_ratio >= 0.92,
    );
    row(
        "/healthz p99 during the login flood, c4 (ms)",
        during.p99_ms,
        "<= 3",
        during.p99_ms <= 3.0,
    );
    let chat_ratio = ratio(edge_16.throughput_rps, direct_16.throughput_rps);
    row(
        "chat c16 through the edge vs the provider direct (throughput ratio)",
        chat_ratio,
        ">= 0.9",
        chat_ratio >= 0.9,
    );
    let slow_ratio = ratio(edge_slow.throughput_rps, direct_slow.throughput_rps);
    row(
        &format!("chat c16 vs a provider taking {SLOW_PROVIDER_MS} ms (throughput ratio)"),
        slow_ratio,
        ">= 0.9",
        slow_ratio >= 0.9,
    );
    let added_p50 = edge_1.p50_ms - direct_1.p50_ms;
    let added_p99 = edge_1.p99_ms - direct_1.p99_ms;
    row(
        "chat c1 added p50 (ms)",
        added_p50,
        "<= 0.3",
        added_p50 <= 0.3,
    );
    row(
        "chat c1 added p99 (ms)",
        added_p99,
        "<= 1",
        added_p99 <= 1.0,
    );
    let rate_p99 = edge_rate.p99_ms - direct_rate.p99_ms;
    row(
        "chat at 1000 req/s, c16: added p50 (ms)",
        edge_rate.p50_ms - direct_rate.p50_ms,
        "(issue 13: reported)",
        true,
    );
    row(
        "chat at 1000 req/s, c16: added p99 (ms)",
        rate_p99,
        "<= 1",
        rate_p99 <= 1.0,
    );
    let errors = logins_row.errors
        + flood.errors
        + during.errors
        + bare_row.errors
        + healthz.errors
        + direct_16.errors
        + edge_16.errors
        + direct_1.errors
        + edge_1.errors
        + direct_rate.errors
        + edge_rate.errors
        + direct_slow.errors
        + edge_slow.errors;
    println!(
        "{}",
        serde_json::json!({"scenario": "shipped", "smoke": args.smoke, "errors": errors})
    );
    provider.stop().await;
    bare.stop().await;
    anyhow::ensure!(errors == 0, "{errors} requests failed");
    Ok(())
}

/// `scenario soak`: mixed traffic for `seconds` (health checks, logins, chat, sign-ups) with a
/// sign-up burst a third of the way in; the process's resident memory sampled every second.
pub async fn soak(args: SoakArgs) -> anyhow::Result<()> {
    let provider = FixedServer::start("chat").await?;
    let mut extra: Vec<(&str, String)> = RAISED_LIMITS
        .iter()
        .map(|(k, v)| (*k, (*v).to_owned()))
        .collect();
    extra.push(("LLM_BASE_URL", format!("http://{}/v1", provider.addr)));
    extra.push(("LLM_MODEL", "bench".to_owned()));
    println!("{}", configuration(&extra));
    let portico = Portico::start(&args.portico, &extra).await?;
    let edge = portico.edge;
    let failed = register_all(edge, &accounts(0..8), 4).await;
    anyhow::ensure!(failed == 0, "{failed} of 8 sign-ups failed");
    let idle = portico.rss_mib();

    let total = Duration::from_secs_f64(args.seconds);
    let mixed = |target: Target, concurrency: usize, rate: f64| {
        let load = Load {
            concurrency,
            rate: Some(rate),
            duration: args.seconds,
            warmup: 0.0,
        };
        tokio::spawn(async move { run("soak", target, &load).await })
    };
    let chat: Arc<[Bytes]> = Arc::new([Bytes::from_static(CHAT_REQUEST)]);
    let traffic = [
        mixed(get(edge, "/healthz"), 2, 200.0),
        mixed(get(edge, "/readyz"), 1, 10.0),
        mixed(post(edge, "/api/v1/auth/login", accounts(0..8)), 2, 20.0),
        mixed(post(edge, "/v1/chat/completions", chat), 4, 200.0),
    ];
    let started = Instant::now();
    let burst_at = total / 3;
    let signups = args.signups;
    let burst = tokio::spawn(async move {
        tokio::time::sleep(burst_at).await;
        register_all(edge, &accounts(1000..1000 + signups), 16).await
    });
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while started.elapsed() < total {
        tick.tick().await;
        samples.push((started.elapsed().as_secs_f64(), portico.rss_mib()));
    }
    let burst_failed = burst.await?;
    let mut errors = burst_failed as u64;
    let mut requests = 0;
    for task in traffic {
        let report = task.await??;
        errors += report.errors;
        requests += report.requests;
    }
    let max = samples.iter().map(|s| s.1).fold(idle, f64::max);
    let last = samples.last().map_or(idle, |s| s.1);
    // Growth over the last half, per minute: flat means the process levels off.
    let half: Vec<_> = samples
        .iter()
        .filter(|s| s.0 >= args.seconds / 2.0)
        .collect();
    let slope = match (half.first(), half.last()) {
        (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) / (b.0 - a.0) * 60.0,
        _ => 0.0,
    };
    println!(
        "{}",
        serde_json::json!({
            "scenario": "soak",
            "seconds": args.seconds,
            "requests": requests,
            "signups": signups,
            "errors": errors,
            "idle_mib": idle,
            "max_mib": max,
            "last_mib": last,
            "second_half_growth_mib_per_min": slope,
            "samples": samples.iter().step_by(10.max(samples.len() / 60)).map(|s| [s.0.round(), (s.1 * 10.0).round() / 10.0]).collect::<Vec<_>>(),
        })
    );
    row("soak: max resident memory (MiB)", max, "<= 80", max <= 80.0);
    portico.stop().await;
    provider.stop().await;
    anyhow::ensure!(errors == 0, "{errors} requests failed");
    Ok(())
}
