//! The suite's settings, one section per component, with the names and defaults of README, Configuration.

use std::{net::SocketAddr, time::Duration};

use ipnet::IpNet;
use secrecy::{ExposeSecret as _, SecretString};

use crate::{ConfigError, Reader, Source, Unit};

/// Default edge listen address.
pub const DEFAULT_EDGE_ADDR: &str = "127.0.0.1:3000";
/// Default auth listen address.
pub const DEFAULT_AUTH_ADDR: &str = "127.0.0.1:50051";
/// Default content listen address.
pub const DEFAULT_CONTENT_ADDR: &str = "127.0.0.1:50052";
/// Default chat-gateway listen address.
pub const DEFAULT_CHAT_ADDR: &str = "127.0.0.1:50053";
/// Default ratelimit listen address.
pub const DEFAULT_RATELIMIT_ADDR: &str = "127.0.0.1:50054";
/// Default database: a SQLite file under `./data/`, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/portico.db?mode=rwc";
/// Default `DATABASE_ACQUIRE_TIMEOUT`.
pub const DEFAULT_DATABASE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest request body the edge accepts (docs/CONTRACT.md §4).
pub const BODY_LIMIT_BYTES: usize = 1024 * 1024;
/// Longest a graceful drain may take before the process exits anyway.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest `ADMIN_API_KEY` accepted: 32 characters (e.g. `openssl rand -hex 16`).
pub const MIN_ADMIN_API_KEY_CHARS: usize = 32;
/// Default `EDGE_MAX_FORWARDED_HEADER_BYTES`: the largest header the edge forwards into gRPC
/// metadata (`Authorization`, `X-Admin-Key`, `traceparent`, …).
pub const DEFAULT_MAX_FORWARDED_HEADER_BYTES: usize = 8 * 1024;
/// Default `AUTH_HASH_QUEUE_MAX`: password hashes waiting for a hashing thread before new
/// ones are refused (RESOURCE_EXHAUSTED, 503 at the edge).
pub const DEFAULT_HASH_QUEUE_MAX: usize = 64;
/// Default `AUTH_ACCOUNT_MAX_FAILURES`: failed logins of one account, from any address, before
/// its attempts are spaced out by exponential back-off.
pub const DEFAULT_ACCOUNT_MAX_FAILURES: u32 = 10;
/// Default `AUTH_ACCOUNT_BACKOFF_MAX`: the longest gap the back-off imposes.
pub const DEFAULT_ACCOUNT_BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);
/// Default `AUTH_PASSWORD_RESET_TTL`: how long a password reset token may be used.
pub const DEFAULT_PASSWORD_RESET_TTL: Duration = Duration::from_secs(30 * 60);
/// Default `AUTH_PASSWORD_RESET_ACCOUNT_MAX`: reset requests for one email address (known or
/// not) within `AUTH_PASSWORD_RESET_ACCOUNT_WINDOW` before further ones are refused (429).
pub const DEFAULT_PASSWORD_RESET_ACCOUNT_MAX: u32 = 5;
/// Default `AUTH_PASSWORD_RESET_ACCOUNT_WINDOW`.
pub const DEFAULT_PASSWORD_RESET_ACCOUNT_WINDOW: Duration = Duration::from_secs(3600);
/// Default `AUTH_REFRESH_GRACE`: how long a spent refresh token presented again returns the same
/// successor pair instead of revoking its family (0 = strict rotation).
pub const DEFAULT_REFRESH_GRACE: Duration = Duration::from_secs(10);
/// Default `LLM_MAX_TOKENS`: the most completion tokens one chat call may ask for.
pub const DEFAULT_LLM_MAX_TOKENS: u32 = 4096;

/// Deployment environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    /// Local development: permissive defaults.
    Development,
    /// Automated tests.
    Test,
    /// Production: strict checks (CORS_ORIGINS required, …).
    Production,
}

/// Everything every process reads; each component takes its section.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `APP_ENV`.
    pub app_env: AppEnv,
    /// Listen addresses.
    pub addrs: Addrs,
    /// Storage shared by the services.
    pub storage: Storage,
    /// Logging and tracing.
    pub telemetry: TelemetrySettings,
    /// The REST edge.
    pub edge: EdgeSettings,
    /// The auth service.
    pub auth: AuthSettings,
    /// The ratelimit service.
    pub ratelimit: RateLimitSettings,
    /// The chat gateway.
    pub chat: ChatSettings,
    /// TLS and peer trust.
    pub transport: crate::Transport,
    /// `ADMIN_API_KEY`: admin routes accept `X-Admin-Key` with this value.
    pub admin_api_key: Option<SecretString>,
    /// `SHUTDOWN_TIMEOUT`: longest graceful drain.
    pub shutdown_timeout: Duration,
    /// `METRICS_ADDR`: where a standalone service process serves `/metrics` (unset: nowhere;
    /// under `portico serve` the edge's `/metrics` already shows every component).
    pub metrics_addr: Option<SocketAddr>,
}

/// Listen addresses (`*_ADDR`).
#[derive(Debug, Clone)]
pub struct Addrs {
    /// `EDGE_ADDR`.
    pub edge: SocketAddr,
    /// `AUTH_ADDR`.
    pub auth: SocketAddr,
    /// `CONTENT_ADDR`.
    pub content: SocketAddr,
    /// `CHAT_ADDR`.
    pub chat: SocketAddr,
    /// `RATELIMIT_ADDR`.
    pub ratelimit: SocketAddr,
}

/// Database and cache.
#[derive(Debug, Clone)]
pub struct Storage {
    /// `DATABASE_URL` (sqlite:… or postgres://…).
    pub database_url: SecretString,
    /// `REDIS_URL`; unset → in-memory.
    pub redis_url: Option<SecretString>,
    /// `RATE_LIMIT_REDIS_URL`, falling back to `REDIS_URL`.
    pub ratelimit_redis_url: Option<SecretString>,
    /// `REDIS_KEY_PREFIX`, prepended to every key.
    pub redis_key_prefix: String,
    /// `MIGRATE_ON_BOOT`.
    pub migrate_on_boot: bool,
    /// `DATABASE_ACQUIRE_TIMEOUT`: how long a call waits for a pool connection (and a new
    /// connection for its handshake) before it fails with 503.
    pub database_acquire_timeout: Duration,
}

/// Logs and traces.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// `LOG_FORMAT`: json or pretty.
    pub log_json: bool,
    /// `LOG_LEVEL` or `RUST_LOG` (an EnvFilter directive).
    pub log_filter: String,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (gRPC); unset → no exporter.
    pub otlp_endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME`; defaults to `portico-<component>`.
    pub service_name: Option<String>,
    /// `OTEL_TRACES_SAMPLER` (+ `OTEL_TRACES_SAMPLER_ARG` for ratios).
    pub sampler: Sampler,
}

/// The standard OTEL sampler names Portico honours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio` with its ratio.
    TraceIdRatio(f64),
    /// `parentbased_always_on` (the default).
    ParentBasedAlwaysOn,
    /// `parentbased_traceidratio` with its ratio.
    ParentBasedTraceIdRatio(f64),
}

/// Who may read `/metrics`.
#[derive(Debug, Clone)]
pub enum MetricsGuard {
    /// Anyone.
    None,
    /// Callers sending `x-metrics-secret` equal to this.
    Secret(SecretString),
    /// Peers inside these networks.
    Cidr(Vec<IpNet>),
}

impl MetricsGuard {
    /// Whether a scrape with this `x-metrics-secret` header from this client may read metrics.
    pub fn allows(&self, secret_header: Option<&[u8]>, client_ip: std::net::IpAddr) -> bool {
        match self {
            MetricsGuard::None => true,
            MetricsGuard::Secret(secret) => {
                secret_header.is_some_and(|given| crate::secret_matches(given, secret))
            }
            MetricsGuard::Cidr(allowlist) => allowlist.iter().any(|net| net.contains(&client_ip)),
        }
    }
}

/// The REST edge.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// `AUTH_GRPC_URL`.
    pub auth_url: String,
    /// `CONTENT_GRPC_URL`.
    pub content_url: String,
    /// `CHAT_GRPC_URL`.
    pub chat_url: String,
    /// `RATELIMIT_GRPC_URL`.
    pub ratelimit_url: String,
    /// `CORS_ORIGINS`: exact origins, or `*`.
    pub cors_origins: Vec<String>,
    /// `CORS_ALLOW_CREDENTIALS`.
    pub cors_allow_credentials: bool,
    /// `CORS_ALLOW_HEADERS`: request header names a preflight may allow (lowercase; a trailing
    /// `*` matches a prefix, as in `x-stainless-*`).
    pub cors_allow_headers: Vec<String>,
    /// `CORS_EXPOSE_HEADERS`: response headers a browser script may read.
    pub cors_expose_headers: Vec<String>,
    /// `METRICS_ENABLED`.
    pub metrics_enabled: bool,
    /// `METRICS_GUARD` with its secret or allowlist.
    pub metrics_guard: MetricsGuard,
    /// `TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// `MAINTENANCE_MODE`.
    pub maintenance_mode: bool,
    /// `EDGE_HEADER_READ_TIMEOUT`: a client must send its headers within this.
    pub header_read_timeout: Duration,
    /// `EDGE_REQUEST_TIMEOUT`: deadline of a backend call made for a request.
    pub request_timeout: Duration,
    /// `HEALTH_CHECK_TIMEOUT`: deadline of each backend health check.
    pub health_check_timeout: Duration,
    /// `EDGE_MAX_FORWARDED_HEADER_BYTES`: the largest header value forwarded to a service
    /// (larger: 431, or 401 for `Authorization`).
    pub max_forwarded_header_bytes: usize,
}

/// The auth service.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `JWT_SIGNING_KEY_FILE`; unset → a dev key generated under `./data/`.
    pub signing_key_file: Option<String>,
    /// `JWT_VERIFY_KEY_FILES`: older public keys still accepted.
    pub verify_key_files: Vec<String>,
    /// `JWT_ISSUER`.
    pub issuer: String,
    /// `JWT_AUDIENCE`.
    pub audience: String,
    /// `JWT_ACCESS_TTL`.
    pub access_ttl: Duration,
    /// `JWT_REFRESH_TTL`.
    pub refresh_ttl: Duration,
    /// `AUTH_LOGIN_MAX_ATTEMPTS`.
    pub login_max_attempts: u32,
    /// `AUTH_LOGIN_ATTEMPT_WINDOW_MINUTES`.
    pub login_attempt_window: Duration,
    /// `AUTH_LOGIN_LOCKOUT_MINUTES`.
    pub login_lockout: Duration,
    /// `AUTH_EMAIL_VERIFICATION_REQUIRED`.
    pub email_verification_required: bool,
    /// `AUTH_ADMIN_EMAILS`: accounts with these emails get the `admin` role once the address
    /// is verified (never from registration alone).
    pub admin_emails: Vec<String>,
    /// `AUTH_HASH_QUEUE_MAX`: password hashes that may wait for a hashing thread.
    pub hash_queue_max: usize,
    /// `AUTH_ACCOUNT_MAX_FAILURES`: failures of one account (any address) before back-off.
    pub account_max_failures: u32,
    /// `AUTH_ACCOUNT_BACKOFF_MAX`: the longest gap between two checked attempts of an account
    /// in back-off.
    pub account_backoff_max: Duration,
    /// `AUTH_PASSWORD_RESET_TTL`: lifetime of a password reset token.
    pub password_reset_ttl: Duration,
    /// `AUTH_PASSWORD_RESET_ACCOUNT_MAX`: reset requests per email address per window.
    pub password_reset_account_max: u32,
    /// `AUTH_PASSWORD_RESET_ACCOUNT_WINDOW`: the window of that limit.
    pub password_reset_account_window: Duration,
    /// `AUTH_REFRESH_GRACE`: a spent refresh token presented again within this returns the same
    /// successor pair; zero = strict rotation (any reuse revokes the family).
    pub refresh_grace: Duration,
    /// `AUTH_API_KEY_SECRET`: the HMAC-SHA256 key API keys are stored under (unset: SHA-256).
    pub api_key_secret: Option<SecretString>,
}

/// The ratelimit service.
#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    /// `RATE_LIMIT_GLOBAL_MAX`.
    pub global_max: u32,
    /// `RATE_LIMIT_GLOBAL_WINDOW` (bare numbers are milliseconds).
    pub global_window: Duration,
    /// `RATE_LIMIT_AUTH_MAX` (per global window).
    pub auth_max: u32,
    /// `RATE_LIMIT_CAPACITY`.
    pub chat_capacity: u32,
    /// `RATE_LIMIT_REFILL_RATE` (tokens per second).
    pub chat_refill_rate: f64,
    /// `RATE_LIMIT_WHITELIST`.
    pub whitelist: Vec<IpNet>,
    /// `RATE_LIMIT_DESCRIPTORS_FILE`.
    pub descriptors_file: Option<String>,
    /// `RATE_LIMIT_FAIL_MODE`: true = open.
    pub fail_open: bool,
    /// `RATE_LIMIT_CHECK_TIMEOUT`: the edge's deadline for one decision.
    pub check_timeout: Duration,
    /// `RATE_LIMIT_LEGACY_HEADERS`: the edge sends `RateLimit-Limit`, `RateLimit-Remaining` and
    /// `RateLimit-Reset` (draft-ietf-httpapi-ratelimit-headers-06) instead of `RateLimit-Policy`
    /// and `RateLimit` (the current drafts).
    pub legacy_headers: bool,
}

/// The chat gateway.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    /// `LLM_PROVIDERS_FILE`.
    pub providers_file: Option<String>,
    /// `LLM_BASE_URL`.
    pub base_url: Option<String>,
    /// `LLM_API_KEY`.
    pub api_key: Option<SecretString>,
    /// `LLM_MODEL`.
    pub model: Option<String>,
    /// `LLM_TIMEOUT`.
    pub timeout: Duration,
    /// `LLM_FIRST_TOKEN_TIMEOUT`: one streaming attempt's wait for its first token.
    pub first_token_timeout: Duration,
    /// `LLM_CB_FAILURE_THRESHOLD`.
    pub cb_failure_threshold: u32,
    /// `LLM_CB_RESET_TIMEOUT`.
    pub cb_reset_timeout: Duration,
    /// `LLM_CB_SUCCESS_THRESHOLD`.
    pub cb_success_threshold: u32,
    /// `CHAT_ALLOW_ANONYMOUS` (default: true, false when `APP_ENV=production`).
    pub allow_anonymous: bool,
    /// `LLM_MODELS`: models callers may ask the `LLM_BASE_URL` provider for (besides
    /// `LLM_MODEL`).
    pub models: Vec<String>,
    /// `LLM_MAX_TOKENS`: the most completion tokens a call may ask for (more: 400); also sent
    /// when the caller asks for none.
    pub max_tokens: u32,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&crate::Env)
    }

    /// Reads `source`, reporting every invalid variable at once.
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let mut r = Reader::new(source);
        let app_env = match r
            .choice(
                "APP_ENV",
                "development",
                &["development", "test", "production"],
            )
            .as_str()
        {
            "production" => AppEnv::Production,
            "test" => AppEnv::Test,
            _ => AppEnv::Development,
        };
        let addrs = Addrs {
            edge: r.addr("EDGE_ADDR", DEFAULT_EDGE_ADDR),
            auth: r.addr("AUTH_ADDR", DEFAULT_AUTH_ADDR),
            content: r.addr("CONTENT_ADDR", DEFAULT_CONTENT_ADDR),
            chat: r.addr("CHAT_ADDR", DEFAULT_CHAT_ADDR),
            ratelimit: r.addr("RATELIMIT_ADDR", DEFAULT_RATELIMIT_ADDR),
        };
        let storage = read_storage(&mut r);
        let telemetry = read_telemetry(&mut r);
        let edge = read_edge(&mut r, app_env);
        let auth = read_auth(&mut r, app_env);
        let ratelimit = read_ratelimit(&mut r);
        let chat = read_chat(&mut r, app_env);
        let transport = crate::transport::read_transport(&mut r);
        let mut edge = edge;
        for (key, url) in [
            ("AUTH_GRPC_URL", &mut edge.auth_url),
            ("CONTENT_GRPC_URL", &mut edge.content_url),
            ("CHAT_GRPC_URL", &mut edge.chat_url),
            ("RATELIMIT_GRPC_URL", &mut edge.ratelimit_url),
        ] {
            crate::transport::check_grpc_url(&mut r, key, url, transport.grpc_tls.as_ref());
        }
        let admin_api_key = r.secret("ADMIN_API_KEY");
        if admin_api_key
            .as_ref()
            .is_some_and(|key| key.expose_secret().chars().count() < MIN_ADMIN_API_KEY_CHARS)
        {
            r.problem(
                "ADMIN_API_KEY",
                format!(
                    "too short: at least {MIN_ADMIN_API_KEY_CHARS} characters (e.g. `openssl rand -hex 16`)"
                ),
            );
        }
        let shutdown_timeout =
            r.duration("SHUTDOWN_TIMEOUT", DEFAULT_SHUTDOWN_TIMEOUT, Unit::Seconds);
        let metrics_addr = r
            .raw("METRICS_ADDR")
            .map(|_| r.addr("METRICS_ADDR", "127.0.0.1:0"));
        r.finish()?;
        Ok(Self {
            app_env,
            addrs,
            storage,
            telemetry,
            edge,
            auth,
            ratelimit,
            chat,
            transport,
            admin_api_key,
            shutdown_timeout,
            metrics_addr,
        })
    }
}

fn read_storage(r: &mut Reader<'_>) -> Storage {
    let database_url = r.string("DATABASE_URL", DEFAULT_DATABASE_URL);
    if !(database_url.starts_with("sqlite:")
        || database_url.starts_with("postgres://")
        || database_url.starts_with("postgresql://"))
    {
        r.problem(
            "DATABASE_URL",
            "unsupported scheme: expected sqlite://path?mode=rwc, sqlite::memory: or postgres://user@host/db",
        );
    }
    crate::transport::check_database_tls(r, &database_url);
    let redis_url = r.raw("REDIS_URL");
    let ratelimit_redis_url = r.raw("RATE_LIMIT_REDIS_URL").or_else(|| redis_url.clone());
    for (key, url) in [
        ("REDIS_URL", &redis_url),
        ("RATE_LIMIT_REDIS_URL", &ratelimit_redis_url),
    ] {
        if let Some(url) = url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                r.problem(
                    key,
                    "unsupported scheme: expected redis://host:6379 or rediss://host:6380",
                );
            }
        }
    }
    Storage {
        database_url: SecretString::from(database_url),
        redis_url: redis_url.map(SecretString::from),
        ratelimit_redis_url: ratelimit_redis_url.map(SecretString::from),
        redis_key_prefix: r.string("REDIS_KEY_PREFIX", ""),
        migrate_on_boot: r.bool("MIGRATE_ON_BOOT", true),
        database_acquire_timeout: r.duration(
            "DATABASE_ACQUIRE_TIMEOUT",
            DEFAULT_DATABASE_ACQUIRE_TIMEOUT,
            Unit::Seconds,
        ),
    }
}

fn read_telemetry(r: &mut Reader<'_>) -> TelemetrySettings {
    let log_json = r.choice("LOG_FORMAT", "json", &["json", "pretty"]) == "json";
    let log_filter = r
        .raw("LOG_LEVEL")
        .or_else(|| r.raw("RUST_LOG"))
        // sqlx logs every PostgreSQL NOTICE at info ("relation … already exists, skipping").
        .unwrap_or_else(|| "info,sqlx=warn".to_owned());
    let otlp_endpoint = r.raw("OTEL_EXPORTER_OTLP_ENDPOINT");
    if let Some(endpoint) = &otlp_endpoint {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            r.problem(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("`{endpoint}` is not a URL: expected http://collector:4317"),
            );
        }
    }
    let sampler_name = r.choice(
        "OTEL_TRACES_SAMPLER",
        "parentbased_always_on",
        &[
            "always_on",
            "always_off",
            "traceidratio",
            "parentbased_always_on",
            "parentbased_traceidratio",
        ],
    );
    let ratio = r.number("OTEL_TRACES_SAMPLER_ARG", 1.0f64, 0.0, 1.0);
    let sampler = match sampler_name.as_str() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatio(ratio),
        "parentbased_traceidratio" => Sampler::ParentBasedTraceIdRatio(ratio),
        _ => Sampler::ParentBasedAlwaysOn,
    };
    TelemetrySettings {
        log_json,
        log_filter,
        otlp_endpoint,
        service_name: r.raw("OTEL_SERVICE_NAME"),
        sampler,
    }
}

/// Default `CORS_ALLOW_HEADERS`: Portico's own request headers, W3C trace context, and what the
/// official OpenAI SDKs send from a browser (`x-stainless-*`, `openai-*`, `idempotency-key`).
pub const CORS_ALLOW_HEADERS_DEFAULT: &str = "authorization, content-type, accept, if-match, if-none-match, x-admin-key, x-api-key, x-correlation-id, x-metrics-secret, traceparent, tracestate, idempotency-key, openai-*, x-stainless-*";
/// Default `CORS_EXPOSE_HEADERS`: what Portico's responses carry for scripts to read.
/// Both rate limit header forms are listed, so `RATE_LIMIT_LEGACY_HEADERS` needs no CORS change.
pub const CORS_EXPOSE_HEADERS_DEFAULT: &str = "x-correlation-id, etag, retry-after, ratelimit-policy, ratelimit, ratelimit-limit, ratelimit-remaining, ratelimit-reset";

fn read_edge(r: &mut Reader<'_>, app_env: AppEnv) -> EdgeSettings {
    let cors_origins = r.list("CORS_ORIGINS");
    for origin in &cors_origins {
        let valid = origin == "*"
            || ((origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.ends_with('/'));
        if !valid {
            r.problem(
                "CORS_ORIGINS",
                format!("`{origin}` is not an origin: expected scheme://host[:port] without a path, or *"),
            );
        }
    }
    let cors_allow_credentials = r.bool("CORS_ALLOW_CREDENTIALS", false);
    let mut header_list = |key: &str, default: &str| {
        let list = match r.raw(key) {
            Some(_) => r.list(key),
            None => default.split(", ").map(str::to_owned).collect(),
        };
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'+-.^_`|~".contains(c);
        let mut names = Vec::new();
        for name in list {
            let stem = name.strip_suffix('*').unwrap_or(&name);
            if stem.is_empty() || !stem.chars().all(token) {
                r.problem(
                    key,
                    format!("`{name}` is not a header name: expected names such as x-trace-id, or a prefix such as x-stainless-*"),
                );
            }
            names.push(name.to_ascii_lowercase());
        }
        names
    };
    let cors_allow_headers = header_list("CORS_ALLOW_HEADERS", CORS_ALLOW_HEADERS_DEFAULT);
    let cors_expose_headers = header_list("CORS_EXPOSE_HEADERS", CORS_EXPOSE_HEADERS_DEFAULT);
    if cors_allow_credentials && cors_origins.iter().any(|o| o == "*") {
        r.problem(
            "CORS_ORIGINS",
            "`*` cannot be combined with CORS_ALLOW_CREDENTIALS=true: list the exact origins",
        );
    }
    if app_env == AppEnv::Production && cors_origins.is_empty() {
        r.problem(
            "CORS_ORIGINS",
            "required when APP_ENV=production: a comma-separated list of allowed origins",
        );
    }
    let guard = r.choice("METRICS_GUARD", "none", &["none", "secret", "cidr"]);
    let metrics_guard = match guard.as_str() {
        "secret" => match r.secret("METRICS_GUARD_SECRET") {
            Some(secret) => MetricsGuard::Secret(secret),
            None => {
                r.problem("METRICS_GUARD_SECRET", "required when METRICS_GUARD=secret");
                MetricsGuard::None
            }
        },
        "cidr" => {
            let nets = r.cidrs("METRICS_GUARD_ALLOWLIST");
            if nets.is_empty() {
                r.problem(
                    "METRICS_GUARD_ALLOWLIST",
                    "required when METRICS_GUARD=cidr: comma-separated CIDRs such as 10.0.0.0/8",
                );
            }
            MetricsGuard::Cidr(nets)
        }
        _ => MetricsGuard::None,
    };
    let metrics_enabled = r.bool("METRICS_ENABLED", true);
    if app_env == AppEnv::Production
        && metrics_enabled
        && matches!(metrics_guard, MetricsGuard::None)
    {
        r.problem(
            "METRICS_GUARD",
            "`none` is refused when APP_ENV=production: use secret or cidr (or METRICS_ENABLED=false)",
        );
    }
    EdgeSettings {
        auth_url: r.url("AUTH_GRPC_URL", "http://127.0.0.1:50051"),
        content_url: r.url("CONTENT_GRPC_URL", "http://127.0.0.1:50052"),
        chat_url: r.url("CHAT_GRPC_URL", "http://127.0.0.1:50053"),
        ratelimit_url: r.url("RATELIMIT_GRPC_URL", "http://127.0.0.1:50054"),
        cors_origins,
        cors_allow_credentials,
        cors_allow_headers,
        cors_expose_headers,
        metrics_enabled,
        metrics_guard,
        trusted_proxies: r.cidrs("TRUSTED_PROXIES"),
        maintenance_mode: r.bool("MAINTENANCE_MODE", false),
        header_read_timeout: r.duration(
            "EDGE_HEADER_READ_TIMEOUT",
            Duration::from_secs(10),
            Unit::Seconds,
        ),
        request_timeout: r.duration(
            "EDGE_REQUEST_TIMEOUT",
            Duration::from_secs(10),
            Unit::Seconds,
        ),
        health_check_timeout: r.duration(
            "HEALTH_CHECK_TIMEOUT",
            Duration::from_millis(500),
            Unit::Millis,
        ),
        max_forwarded_header_bytes: r.number(
            "EDGE_MAX_FORWARDED_HEADER_BYTES",
            DEFAULT_MAX_FORWARDED_HEADER_BYTES,
            256,
            64 * 1024,
        ),
    }
}

fn read_auth(r: &mut Reader<'_>, app_env: AppEnv) -> AuthSettings {
    let email_verification_required = r.bool("AUTH_EMAIL_VERIFICATION_REQUIRED", false);
    let admin_emails: Vec<String> = r
        .list("AUTH_ADMIN_EMAILS")
        .into_iter()
        .map(|email| email.to_lowercase())
        .collect();
    if app_env == AppEnv::Production && !admin_emails.is_empty() && !email_verification_required {
        r.problem(
            "AUTH_ADMIN_EMAILS",
            "refused when APP_ENV=production without AUTH_EMAIL_VERIFICATION_REQUIRED=true: \
             provision admins with `portico users grant-admin EMAIL` instead",
        );
    }
    AuthSettings {
        signing_key_file: r.raw("JWT_SIGNING_KEY_FILE"),
        verify_key_files: r.list("JWT_VERIFY_KEY_FILES"),
        issuer: r.string("JWT_ISSUER", "portico"),
        audience: r.string("JWT_AUDIENCE", "portico"),
        access_ttl: r.duration(
            "JWT_ACCESS_TTL",
            Duration::from_secs(15 * 60),
            Unit::Seconds,
        ),
        refresh_ttl: r.duration(
            "JWT_REFRESH_TTL",
            Duration::from_secs(7 * 86_400),
            Unit::Seconds,
        ),
        login_max_attempts: r.number("AUTH_LOGIN_MAX_ATTEMPTS", 5u32, 1, 1000),
        login_attempt_window: r.duration(
            "AUTH_LOGIN_ATTEMPT_WINDOW_MINUTES",
            Duration::from_secs(15 * 60),
            Unit::Minutes,
        ),
        login_lockout: r.duration(
            "AUTH_LOGIN_LOCKOUT_MINUTES",
            Duration::from_secs(15 * 60),
            Unit::Minutes,
        ),
        email_verification_required,
        admin_emails,
        hash_queue_max: r.number("AUTH_HASH_QUEUE_MAX", DEFAULT_HASH_QUEUE_MAX, 1, 1_000_000),
        account_max_failures: r.number(
            "AUTH_ACCOUNT_MAX_FAILURES",
            DEFAULT_ACCOUNT_MAX_FAILURES,
            1,
            1_000_000,
        ),
        account_backoff_max: r.duration(
            "AUTH_ACCOUNT_BACKOFF_MAX",
            DEFAULT_ACCOUNT_BACKOFF_MAX,
            Unit::Seconds,
        ),
        password_reset_ttl: r.duration(
            "AUTH_PASSWORD_RESET_TTL",
            DEFAULT_PASSWORD_RESET_TTL,
            Unit::Seconds,
        ),
        password_reset_account_max: r.number(
            "AUTH_PASSWORD_RESET_ACCOUNT_MAX",
            DEFAULT_PASSWORD_RESET_ACCOUNT_MAX,
            1,
            1_000_000,
        ),
        password_reset_account_window: r.duration(
            "AUTH_PASSWORD_RESET_ACCOUNT_WINDOW",
            DEFAULT_PASSWORD_RESET_ACCOUNT_WINDOW,
            Unit::Seconds,
        ),
        refresh_grace: r.duration_or_zero(
            "AUTH_REFRESH_GRACE",
            DEFAULT_REFRESH_GRACE,
            Unit::Seconds,
        ),
        api_key_secret: r.secret("AUTH_API_KEY_SECRET"),
    }
}

fn read_ratelimit(r: &mut Reader<'_>) -> RateLimitSettings {
    RateLimitSettings {
        global_max: r.number("RATE_LIMIT_GLOBAL_MAX", 100u32, 1, 10_000_000),
        global_window: r.duration(
            "RATE_LIMIT_GLOBAL_WINDOW",
            Duration::from_secs(60),
            Unit::Millis,
        ),
        auth_max: r.number("RATE_LIMIT_AUTH_MAX", 10u32, 1, 10_000_000),
        chat_capacity: r.number("RATE_LIMIT_CAPACITY", 5u32, 1, 10_000_000),
        chat_refill_rate: r.number("RATE_LIMIT_REFILL_RATE", 0.333f64, 0.000_001, 1_000_000.0),
        whitelist: r.cidrs("RATE_LIMIT_WHITELIST"),
        descriptors_file: r.raw("RATE_LIMIT_DESCRIPTORS_FILE"),
        fail_open: r.choice("RATE_LIMIT_FAIL_MODE", "open", &["open", "closed"]) == "open",
        check_timeout: r.duration(
            "RATE_LIMIT_CHECK_TIMEOUT",
            Duration::from_millis(100),
            Unit::Millis,
        ),
        legacy_headers: r.bool("RATE_LIMIT_LEGACY_HEADERS", false),
    }
}

fn read_chat(r: &mut Reader<'_>, app_env: AppEnv) -> ChatSettings {
    let base_url = r.raw("LLM_BASE_URL");
    if let Some(url) = &base_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            r.problem(
                "LLM_BASE_URL",
                format!("`{url}` is not a URL: expected https://api.example.com/v1"),
            );
        }
    }
    ChatSettings {
        providers_file: r.raw("LLM_PROVIDERS_FILE"),
        base_url,
        api_key: r.secret("LLM_API_KEY"),
        model: r.raw("LLM_MODEL"),
        timeout: r.duration("LLM_TIMEOUT", Duration::from_secs(30), Unit::Seconds),
        first_token_timeout: r.duration(
            "LLM_FIRST_TOKEN_TIMEOUT",
            Duration::from_secs(10),
            Unit::Seconds,
        ),
        cb_failure_threshold: r.number("LLM_CB_FAILURE_THRESHOLD", 5u32, 1, 1000),
        cb_reset_timeout: r.duration(
            "LLM_CB_RESET_TIMEOUT",
            Duration::from_secs(30),
            Unit::Seconds,
        ),
        cb_success_threshold: r.number("LLM_CB_SUCCESS_THRESHOLD", 1u32, 1, 1000),
        allow_anonymous: r.bool("CHAT_ALLOW_ANONYMOUS", app_env != AppEnv::Production),
        models: r.list("LLM_MODELS"),
        max_tokens: r.number("LLM_MAX_TOKENS", DEFAULT_LLM_MAX_TOKENS, 1, 10_000_000),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let values: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_source(&values)
    }

    #[test]
    fn defaults_match_the_design() {
        let s = settings(&[]).expect("defaults are valid");
        assert_eq!(s.addrs.edge.to_string(), DEFAULT_EDGE_ADDR);
        assert_eq!(s.addrs.ratelimit.port(), 50054);
        assert_eq!(s.ratelimit.global_window, Duration::from_secs(60));
        assert_eq!(s.auth.access_ttl, Duration::from_secs(900));
        assert!(s.ratelimit.fail_open);
        assert!(s.chat.allow_anonymous);
        assert!(matches!(s.edge.metrics_guard, MetricsGuard::None));
        assert_eq!(s.auth.password_reset_ttl, DEFAULT_PASSWORD_RESET_TTL);
        assert_eq!(s.auth.refresh_grace, DEFAULT_REFRESH_GRACE);
    }

    #[test]
    fn a_zero_refresh_grace_is_strict_rotation_and_a_bad_one_is_refused() {
        let strict = settings(&[("AUTH_REFRESH_GRACE", "0")]).expect("0 is allowed");
        assert_eq!(strict.auth.refresh_grace, Duration::ZERO);
        let short = settings(&[("AUTH_REFRESH_GRACE", "250ms")]).expect("units");
        assert_eq!(short.auth.refresh_grace, Duration::from_millis(250));
        let error = settings(&[("AUTH_REFRESH_GRACE", "soon")]).expect_err("not a duration");
        assert_eq!(variables(&error), ["AUTH_REFRESH_GRACE"]);
        let error = settings(&[("AUTH_PASSWORD_RESET_TTL", "0")]).expect_err("never valid");
        assert_eq!(variables(&error), ["AUTH_PASSWORD_RESET_TTL"]);
    }

    #[test]
    fn legacy_rate_limit_headers_are_off_by_default_and_a_bad_value_is_refused() {
        assert!(!settings(&[]).expect("defaults").ratelimit.legacy_headers);
        let legacy = settings(&[("RATE_LIMIT_LEGACY_HEADERS", "true")]).expect("a boolean");
        assert!(legacy.ratelimit.legacy_headers);
        let error = settings(&[("RATE_LIMIT_LEGACY_HEADERS", "sometimes")]).expect_err("not one");
        assert_eq!(variables(&error), ["RATE_LIMIT_LEGACY_HEADERS"]);
        assert!(error.problems[0].message.contains("true or false"));
    }

    #[test]
    fn production_requires_cors_origins() {
        let error = settings(&[("APP_ENV", "production")]).expect_err("CORS_ORIGINS missing");
        assert_eq!(error.problems[0].variable, "CORS_ORIGINS");
        assert!(settings(&[
            ("APP_ENV", "production"),
            ("CORS_ORIGINS", "https://app.example.com"),
            ("METRICS_GUARD", "cidr"),
            ("METRICS_GUARD_ALLOWLIST", "10.1.2.0/24"),
        ])
        .is_ok());
    }

    /// The production baseline every guard test below starts from.
    const PRODUCTION: [(&str, &str); 4] = [
        ("APP_ENV", "production"),
        ("CORS_ORIGINS", "https://app.example.com"),
        ("METRICS_GUARD", "secret"),
        ("METRICS_GUARD_SECRET", "scrape-secret"),
    ];

    fn production(extra: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut pairs = PRODUCTION.to_vec();
        pairs.extend_from_slice(extra);
        settings(&pairs)
    }

    fn variables(error: &ConfigError) -> Vec<&str> {
        error.problems.iter().map(|p| p.variable.as_str()).collect()
    }

    #[test]
    fn production_refuses_an_unguarded_metrics_endpoint() {
        let error = settings(&[
            ("APP_ENV", "production"),
            ("CORS_ORIGINS", "https://app.example.com"),
        ])
        .expect_err("METRICS_GUARD=none");
        assert_eq!(variables(&error), ["METRICS_GUARD"]);
        let error = production(&[("METRICS_GUARD", "none")]).expect_err("explicit none");
        assert_eq!(variables(&error), ["METRICS_GUARD"]);
        assert!(production(&[("METRICS_GUARD", "none"), ("METRICS_ENABLED", "false")]).is_ok());
        assert!(settings(&[]).is_ok(), "development keeps the open default");
    }

    #[test]
    fn production_refuses_admin_emails_without_verification() {
        let error =
            production(&[("AUTH_ADMIN_EMAILS", "boss@example.com")]).expect_err("unverified");
        assert_eq!(variables(&error), ["AUTH_ADMIN_EMAILS"]);
        assert!(production(&[
            ("AUTH_ADMIN_EMAILS", "boss@example.com"),
            ("AUTH_EMAIL_VERIFICATION_REQUIRED", "true"),
        ])
        .is_ok());
        assert!(settings(&[("AUTH_ADMIN_EMAILS", "boss@example.com")]).is_ok());
    }

    #[test]
    fn admin_api_keys_shorter_than_32_characters_are_refused() {
        let error = settings(&[("ADMIN_API_KEY", "admin-secret")]).expect_err("short");
        assert_eq!(variables(&error), ["ADMIN_API_KEY"]);
        assert!(!error.to_string().contains("admin-secret"), "{error}");
        assert!(settings(&[("ADMIN_API_KEY", &"k".repeat(32))]).is_ok());
    }

    #[test]
    fn anonymous_chat_defaults_off_in_production_only() {
        assert!(settings(&[]).expect("defaults").chat.allow_anonymous);
        assert!(!production(&[]).expect("production").chat.allow_anonymous);
        assert!(
            production(&[("CHAT_ALLOW_ANONYMOUS", "true")])
                .expect("explicit")
                .chat
                .allow_anonymous
        );
    }

    #[test]
    fn wildcard_cors_refuses_credentials() {
        let error = settings(&[("CORS_ORIGINS", "*"), ("CORS_ALLOW_CREDENTIALS", "true")])
            .expect_err("wildcard with credentials");
        assert_eq!(error.problems[0].variable, "CORS_ORIGINS");
    }

    #[test]
    fn guard_modes_need_their_values() {
        let error = settings(&[("METRICS_GUARD", "secret")]).expect_err("no secret");
        assert_eq!(error.problems[0].variable, "METRICS_GUARD_SECRET");
        let error = settings(&[("METRICS_GUARD", "cidr")]).expect_err("no allowlist");
        assert_eq!(error.problems[0].variable, "METRICS_GUARD_ALLOWLIST");
    }
}
