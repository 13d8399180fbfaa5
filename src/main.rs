//! `portico`: the one binary of the suite. The subcommand picks what runs (docs/CONTRACT.md §1).

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use portico::{Component, Suite};
use portico_config::{ExposeSecret as _, Settings};
use portico_migrations::Owner;
use tokio_util::sync::CancellationToken;

// The allocator (README Benchmarks): jemalloc by default, measured against glibc's malloc and
// mimalloc on the shipped rows; the features exist to re-measure.
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status for invalid configuration (like sysexits' EX_USAGE family: fix the input).
const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "portico",
    version,
    about = "Four gRPC services behind one REST edge"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole suite in one process (the default).
    Serve,
    /// The REST edge only (EDGE_ADDR).
    Edge,
    /// The auth service only (AUTH_ADDR).
    Auth,
    /// The content service only (CONTENT_ADDR).
    Content,
    /// The chat gateway only (CHAT_ADDR).
    ChatGateway,
    /// The ratelimit service only (RATELIMIT_ADDR).
    Ratelimit,
    /// JWT signing keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Accounts in DATABASE_URL: admin provisioning out of band.
    Users {
        #[command(subcommand)]
        action: UsersAction,
    },
    /// Database migrations of DATABASE_URL.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
        /// Only this service's migrations (default: every service).
        #[arg(long, value_enum, global = true)]
        service: Option<MigrateService>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Write a new Ed25519 signing key (PKCS#8 PEM, mode 0600) and print its kid.
    Generate {
        /// Where to write it; refuses to overwrite an existing file.
        #[arg(long)]
        out: String,
    },
}

#[derive(Debug, Subcommand)]
enum UsersAction {
    /// Give the account with this email the admin role (its next login or refresh carries it).
    GrantAdmin {
        /// The account's email.
        email: String,
    },
    /// Take the admin role away (tokens already issued keep it until they expire).
    RevokeAdmin {
        /// The account's email.
        email: String,
    },
    /// Print a single-use password reset token for the account (valid AUTH_PASSWORD_RESET_TTL),
    /// for when the user cannot receive the reset mail; hand it over through a channel you have
    /// verified. Confirming it sets the new password and ends every session.
    ResetPassword {
        /// The account's email.
        email: String,
    },
}

#[derive(Debug, Subcommand)]
enum MigrateAction {
    /// Apply every pending migration.
    Up,
    /// Roll back the last migrations.
    Down {
        /// How many migrations to roll back per service.
        #[arg(long, default_value_t = 1)]
        steps: u32,
    },
    /// List applied and pending migrations.
    Status,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum MigrateService {
    Auth,
    Content,
    ChatGateway,
}

impl From<MigrateService> for Owner {
    fn from(service: MigrateService) -> Self {
        match service {
            MigrateService::Auth => Owner::Auth,
            MigrateService::Content => Owner::Content,
            MigrateService::ChatGateway => Owner::Chat,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Keys {
        action: KeysAction::Generate { out },
    }) = &cli.command
    {
        // Needs no configuration: operators run it on any machine.
        return match portico_auth::keys::write_new_key(out) {
            Ok(kid) => {
                say(format_args!("wrote {out} (EdDSA, kid {kid})"));
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("portico keys generate: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            eprint!("portico: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("portico: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command.unwrap_or(Command::Serve), settings)) {
        Ok(code) => code,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "portico failed");
            eprintln!("portico: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    let component = match &command {
        Command::Serve => "suite",
        Command::Edge => "edge",
        Command::Auth => "auth",
        Command::Content => "content",
        Command::ChatGateway => "chat-gateway",
        Command::Ratelimit => "ratelimit",
        Command::Migrate { .. } => "migrate",
        Command::Users { .. } => "users",
        Command::Keys { .. } => "keys",
    };
    let telemetry = match portico_telemetry::init(component, &settings.telemetry) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("portico: {error}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let clean = match command {
        Command::Serve => serve(settings).await?,
        Command::Edge => {
            let listener = portico::bind("EDGE_ADDR", settings.addrs.edge).await?;
            let shutdown = CancellationToken::new();
            let edge = portico_edge::serve(&settings, listener, shutdown.clone()).await?;
            let stop = shutdown_signal();
            let scheme = edge_scheme(&settings);
            say(format_args!(
                "portico edge listening on {scheme}://{}",
                portico::dialable(edge.local_addr)
            ));
            stop.await;
            shutdown.cancel();
            edge.wait(settings.shutdown_timeout).await
        }
        Command::Auth => {
            service(Component::Auth, settings.addrs.auth, "AUTH_ADDR", &settings).await?
        }
        Command::Content => {
            service(
                Component::Content,
                settings.addrs.content,
                "CONTENT_ADDR",
                &settings,
            )
            .await?
        }
        Command::ChatGateway => {
            service(Component::Chat, settings.addrs.chat, "CHAT_ADDR", &settings).await?
        }
        Command::Ratelimit => {
            service(
                Component::RateLimit,
                settings.addrs.ratelimit,
                "RATELIMIT_ADDR",
                &settings,
            )
            .await?
        }
        Command::Migrate { action, service } => {
            migrate(&settings, action, service).await?;
            true
        }
        Command::Users {
            action: UsersAction::ResetPassword { email },
        } => match portico_auth::issue_password_reset(&settings, &email).await? {
            Some(token) => {
                say(format_args!(
                    "{email}: reset token (single use, valid {} s): {token}\n\
                     confirm: POST /api/v1/auth/password-reset/confirm \
                     {{\"token\":\"…\",\"password\":\"…\"}}",
                    settings.auth.password_reset_ttl.as_secs()
                ));
                true
            }
            None => {
                eprintln!("portico users: no account has the email {email}");
                false
            }
        },
        Command::Users { action } => {
            let (email, admin) = match &action {
                UsersAction::GrantAdmin { email } => (email, true),
                UsersAction::RevokeAdmin { email } => (email, false),
                UsersAction::ResetPassword { .. } => unreachable!("answered above"),
            };
            let found = portico_auth::set_admin(&settings, email, admin).await?;
            if found {
                say(format_args!(
                    "{email}: role {}",
                    if admin { "admin" } else { "user" }
                ));
            } else {
                eprintln!("portico users: no account has the email {email}");
            }
            found
        }
        Command::Keys { .. } => true,
    };
    drop(telemetry);
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// How clients reach the edge: `https` when it has a certificate.
fn edge_scheme(settings: &Settings) -> &'static str {
    if settings.transport.edge_tls.is_some() {
        "https"
    } else {
        "http"
    }
}

async fn serve(settings: Settings) -> anyhow::Result<bool> {
    let scheme = edge_scheme(&settings);
    let suite = Suite::start(settings).await?;
    let stop = shutdown_signal();
    say(format_args!(
        "Portico is up: edge {scheme}://{}",
        portico::dialable(suite.edge_addr)
    ));
    if let Some(plain) = suite.edge_plaintext_addr {
        say(format_args!(
            "  edge (plaintext) http://{}",
            portico::dialable(plain)
        ));
    }
    for component in Component::ALL {
        if let Some(addr) = suite.service_addr(component) {
            say(format_args!(
                "  {:<13} grpc://{}",
                component.name(),
                portico::dialable(addr)
            ));
        }
    }
    stop.await;
    Ok(suite.shutdown().await)
}

async fn service(
    component: Component,
    addr: std::net::SocketAddr,
    variable: &str,
    settings: &Settings,
) -> anyhow::Result<bool> {
    let listener = portico::bind(variable, addr).await?;
    let shutdown = CancellationToken::new();
    let handle = portico::start_service(component, settings, listener, shutdown.clone()).await?;
    let stop = shutdown_signal();
    if let Some(addr) = settings.metrics_addr {
        let metrics = portico::bind("METRICS_ADDR", addr).await?;
        let local = metrics.local_addr()?;
        portico_grpc::serve_metrics(
            metrics,
            settings.edge.metrics_guard.clone(),
            shutdown.clone(),
        );
        say(format_args!(
            "portico {} metrics on http://{}/metrics",
            component.name(),
            portico::dialable(local)
        ));
    }
    say(format_args!(
        "portico {} listening on grpc://{}",
        component.name(),
        portico::dialable(handle.local_addr)
    ));
    stop.await;
    shutdown.cancel();
    Ok(handle.wait(settings.shutdown_timeout).await)
}

async fn migrate(
    settings: &Settings,
    action: MigrateAction,
    service: Option<MigrateService>,
) -> anyhow::Result<()> {
    let db = portico_migrations::connect(
        settings.storage.database_url.expose_secret(),
        None,
        settings.storage.database_acquire_timeout,
    )
    .await?;
    let owners: Vec<Owner> = match service {
        Some(service) => vec![service.into()],
        None => Owner::ALL.to_vec(),
    };
    for owner in owners {
        match action {
            MigrateAction::Up => {
                portico_migrations::up(&db, owner).await?;
                say(format_args!("{}: up to date", owner.name()));
            }
            MigrateAction::Down { steps } => {
                portico_migrations::down(&db, owner, steps).await?;
                say(format_args!("{}: rolled back {steps}", owner.name()));
            }
            MigrateAction::Status => {
                let (applied, pending) = portico_migrations::status(&db, owner).await?;
                for name in applied {
                    say(format_args!("{:<13} applied  {name}", owner.name()));
                }
                for name in pending {
                    say(format_args!("{:<13} pending  {name}", owner.name()));
                }
            }
        }
    }
    Ok(())
}

/// Prints a line for the operator. Unlike `println!`, a closed stdout (`portico | head -1`) is
/// not a reason for a running server to panic.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
/// Registers SIGTERM and SIGINT at once, before the caller announces that it listens: a signal
/// that arrives from then on drains the process, instead of the default action killing it. The
/// future resolves when one arrives.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
