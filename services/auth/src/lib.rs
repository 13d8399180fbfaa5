//! Portico's auth service (`portico.auth.v1.AuthService`): accounts with Argon2id passwords,
//! JWT access tokens (RS256/EdDSA, `kid` thumbprints, rotation), rotating refresh-token
//! families with reuse detection, lockout per email + IP, revocation, email verification and an
//! audit trail.

use std::{sync::Arc, time::Duration};

use portico_config::{AppEnv, ExposeSecret as _, Settings};
use portico_grpc::ServerHandle;
use portico_limiter::{Clock, SystemClock};
use portico_migrations::Owner;
use portico_proto::{auth::auth_service_server::AuthServiceServer, names};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

mod accounts;
mod api_keys;
mod error;
mod grpc;
pub mod keys;
mod lifecycle;
mod lockout;
pub mod mailer;
mod passwords;
mod store;
mod tokens;

pub use accounts::{check_password, normalize_email, EMAIL_PATTERN};
pub use error::Error;
pub use mailer::{EmailSender, LogSender};

/// Longest a Redis command may take (lockouts, denylist).
const REDIS_COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

/// What tests (or an embedding application) may swap.
#[derive(Debug, Clone)]
pub struct Options {
    /// Time source (lockout expiry, token times).
    pub clock: Arc<dyn Clock>,
    /// Delivers verification emails.
    pub sender: Arc<dyn EmailSender>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            sender: Arc::new(LogSender),
        }
    }
}

/// Serves the auth service on `listener` until `shutdown` is cancelled.
pub async fn serve(
    settings: &Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<ServerHandle, Error> {
    serve_with(settings, listener, shutdown, Options::default()).await
}

/// [`serve`] with injected parts.
pub async fn serve_with(
    settings: &Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
    options: Options,
) -> Result<ServerHandle, Error> {
    let auth = &settings.auth;
    if settings.app_env == AppEnv::Production
        && auth.email_verification_required
        && !options.sender.delivers()
    {
        return Err(Error::Config(
            "AUTH_EMAIL_VERIFICATION_REQUIRED: refused when APP_ENV=production with the built-in \
             sender, which writes verification tokens to the log; plug in a real mailer \
             (portico_auth::EmailSender) or provision admins with `portico users grant-admin`"
                .into(),
        ));
    }
    let keys = keys::KeySet::load(auth.signing_key_file.as_deref(), &auth.verify_key_files)
        .map_err(Error::Config)?;
    let storage = &settings.storage;
    let db = portico_migrations::connect(
        storage.database_url.expose_secret(),
        storage.migrate_on_boot.then_some(Owner::Auth),
        storage.database_acquire_timeout,
    )
    .await?;
    let db = portico_migrations::Db::new(db);
    let store = store::Store::new(db.clone());
    let api_keys = api_keys::KeyStore::new(db.clone(), auth.api_key_secret.clone());
    let redis = portico_redis::Redis::connect_optional(
        storage.redis_url.as_ref(),
        &storage.redis_key_prefix,
        REDIS_COMMAND_TIMEOUT,
        settings.transport.redis_tls_ca.as_deref(),
        shutdown.clone(),
    )
    .map_err(|e| Error::Config(format!("REDIS_URL: {e}")))?;
    if let Some(redis) = &redis {
        redis.report_up("auth");
    }
    let guards = match redis {
        Some(redis) => lockout::Guards::redis(redis),
        None => lockout::Guards::Database(store.clone()),
    };
    let accounts = accounts::Accounts {
        store,
        guards,
        passwords: passwords::Passwords::new(auth.hash_queue_max).map_err(Error::Config)?,
        keys: Arc::new(keys),
        settings: auth.clone(),
        clock: options.clock,
        sender: options.sender,
        admin_key: settings.admin_api_key.clone(),
        production: settings.app_env == AppEnv::Production,
        api_keys,
    };
    let routes = Routes::new(AuthServiceServer::new(grpc::AuthGrpc { accounts }));
    let handle = portico_grpc::serve(
        "auth",
        listener,
        routes,
        &[names::AUTH],
        portico_grpc::Transport::from_settings(
            settings,
            ("AUTH_HEALTH_ADDR", settings.transport.health_addrs.auth),
            &shutdown,
        )?,
        shutdown.clone(),
    )
    .await?;
    handle.health.watch_database(db, shutdown);
    Ok(handle)
}

/// Out-of-band admin provisioning (`portico users grant-admin|revoke-admin EMAIL`): sets the
/// role of the account with `email` in `DATABASE_URL`, and records it in the audit trail.
/// Returns false when no account has that email. Tokens already issued keep their role until
/// they expire; the next login or refresh carries the new one.
pub async fn set_admin(settings: &Settings, email: &str, admin: bool) -> Result<bool, Error> {
    let email = normalize_email(email)?;
    let db = portico_migrations::connect(
        settings.storage.database_url.expose_secret(),
        None,
        settings.storage.database_acquire_timeout,
    )
    .await?;
    let store = store::Store::new(portico_migrations::Db::new(db));
    let now = SystemClock.now_micros() as i64 / 1000;
    let role = if admin { "admin" } else { "user" };
    let found = store.set_role_by_email(&email, role, now).await?;
    if found {
        let event = if admin {
            "ROLE_GRANTED"
        } else {
            "ROLE_REVOKED"
        };
        tracing::info!(target: "audit", eventType = event, email, "audit");
        store
            .audit(
                event,
                None,
                Some(&email),
                None,
                None,
                Some("portico users (CLI)"),
                now,
            )
            .await?;
    }
    Ok(found)
}

/// Out-of-band password reset (`portico users reset-password EMAIL`): stores a single-use reset
/// token for the account with `email` in `DATABASE_URL` (valid `AUTH_PASSWORD_RESET_TTL`),
/// records it in the audit trail, and returns it; `None` when no account has that email.
/// Confirming it (`POST /api/v1/auth/password-reset/confirm`) sets the password and ends every
/// session, as a mailed token does.
pub async fn issue_password_reset(
    settings: &Settings,
    email: &str,
) -> Result<Option<String>, Error> {
    let email = normalize_email(email)?;
    let db = portico_migrations::connect(
        settings.storage.database_url.expose_secret(),
        None,
        settings.storage.database_acquire_timeout,
    )
    .await?;
    let store = store::Store::new(portico_migrations::Db::new(db));
    let Some(user) = store.user_by_email(&email).await? else {
        return Ok(None);
    };
    let now = SystemClock.now_micros() as i64 / 1000;
    let token = accounts::random_token();
    let expires = now + settings.auth.password_reset_ttl.as_millis() as i64;
    store
        .insert_reset(&accounts::digest(&token), &user.id, expires, now)
        .await?;
    tracing::info!(target: "audit", eventType = "PASSWORD_RESET_ISSUED", email, "audit");
    store
        .audit(
            "PASSWORD_RESET_ISSUED",
            Some(&user.id),
            Some(&email),
            None,
            None,
            Some("portico users reset-password (CLI)"),
            now,
        )
        .await?;
    Ok(Some(token))
}
