//! Portico's chat gateway: OpenAI-compatible LLM providers behind model aliases, per-provider
//! circuit breakers, retries and failover (`portico.chat.v1.ChatService`).

use std::{sync::Arc, time::Duration};

use portico_config::{ExposeSecret as _, Settings};
use portico_grpc::ServerHandle;
use portico_limiter::{Clock, SystemClock};
use portico_migrations::Owner;
use portico_proto::{chat::chat_service_server::ChatServiceServer, names};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

mod budget;
mod circuit;
mod error;
mod gateway;
mod grpc;
mod metering;
pub mod providers;
mod request;
mod store;
mod upstream;
mod usage;

pub use error::Error;

/// How often each replica re-reads priorities and enabled flags another replica may have changed.
const PROVIDER_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// The first retry's delay before jitter; the second is twice that.
const RETRY_BASE_DELAY: Duration = Duration::from_millis(100);
/// Bound on one Redis command (token denylist).
const REDIS_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);

/// What tests may replace.
#[derive(Debug, Clone)]
pub struct Options {
    /// The circuit breakers' clock.
    pub clock: Arc<dyn Clock>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
        }
    }
}

/// [`serve_with`] with the real clock.
pub async fn serve(
    settings: &Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<ServerHandle, Error> {
    serve_with(settings, listener, shutdown, Options::default()).await
}

/// Reads the providers, connects the database (migrating it when `MIGRATE_ON_BOOT`) and
/// records them there, and serves the chat gateway on `listener` until `shutdown` is cancelled.
pub async fn serve_with(
    settings: &Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
    options: Options,
) -> Result<ServerHandle, Error> {
    let chat = &settings.chat;
    let config = providers::load(chat, &|name| std::env::var(name).ok())?;
    let storage = &settings.storage;
    let db = portico_migrations::connect(
        storage.database_url.expose_secret(),
        storage.migrate_on_boot.then_some(Owner::Chat),
        storage.database_acquire_timeout,
    )
    .await?;
    let db = portico_migrations::Db::new(db);
    let store = store::Store::new(db.clone());
    store.register(&config).await?;
    let gateway = Arc::new(gateway::Gateway::new(
        config,
        circuit::Thresholds {
            failures: chat.cb_failure_threshold,
            reset: chat.cb_reset_timeout,
            successes: chat.cb_success_threshold,
        },
        gateway::Timing {
            total: chat.timeout,
            first_token: chat.first_token_timeout.min(chat.timeout),
            retry_base: RETRY_BASE_DELAY,
        },
        options.clock,
    ));
    refresh(&gateway, &store).await;
    for provider in gateway.providers() {
        tracing::info!(
            provider = %provider.spec.name,
            base_url = %provider.spec.base_url,
            model = %provider.spec.model,
            priority = provider.priority(),
            enabled = provider.enabled(),
            "LLM provider"
        );
    }
    for alias in gateway.aliases() {
        let deployments: Vec<String> = alias
            .deployments
            .iter()
            .map(|d| format!("{}:{}", d.provider.spec.name, d.spec.model))
            .collect();
        tracing::info!(
            model = %alias.name,
            default = alias.name == gateway.default_alias(),
            balance = alias.balance.name(),
            deployments = %deployments.join(", "),
            "LLM model"
        );
    }
    let redis = portico_redis::Redis::connect_optional(
        storage.redis_url.as_ref(),
        &storage.redis_key_prefix,
        REDIS_COMMAND_TIMEOUT,
        settings.transport.redis_tls_ca.as_deref(),
        shutdown.clone(),
    )
    .map_err(|e| Error::Config(format!("REDIS_URL: {e}")))?;
    if let Some(redis) = &redis {
        redis.report_up("chat-gateway");
    }
    let tls = portico_grpc::client::client_tls(settings, &shutdown)
        .map_err(|e| Error::Config(format!("GRPC_TLS_*: {e}")))?;
    let budgets = budget::Budgets::new(redis.clone());
    let verifier =
        portico_tokens::Verifier::for_service(settings, redis, &tls).map_err(Error::Config)?;
    let usage = usage::Usage::new(db.clone());
    usage.spawn_writer(shutdown.clone());
    let service = grpc::ChatGrpc {
        gateway: Arc::clone(&gateway),
        store: store.clone(),
        admin_key: settings.admin_api_key.clone(),
        verifier,
        allow_untrusted: settings.transport.chat_allow_untrusted,
        max_tokens: chat.max_tokens,
        metering: metering::Metering { budgets, usage },
    };
    let routes = Routes::new(ChatServiceServer::new(service));
    let handle = portico_grpc::serve(
        "chat-gateway",
        listener,
        routes,
        &[names::CHAT],
        portico_grpc::Transport::from_settings(
            settings,
            ("CHAT_HEALTH_ADDR", settings.transport.health_addrs.chat),
            &shutdown,
        )?,
        shutdown.clone(),
    )
    .await?;
    let refresh_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(PROVIDER_REFRESH_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = refresh_shutdown.cancelled() => return,
                _ = interval.tick() => refresh(&gateway, &store).await,
            }
        }
    });
    handle.health.watch_database(db, shutdown);
    Ok(handle)
}

/// Applies the table's priorities and enabled flags (changed by any replica's admin route).
async fn refresh(gateway: &gateway::Gateway, store: &store::Store) {
    match store.runtime().await {
        Ok(rows) => {
            for row in rows {
                if let Some(provider) = gateway.provider(&row.name) {
                    provider.set(row.priority, row.enabled);
                } else if let Some(deployment) = gateway.deployment(&row.name) {
                    deployment.set(row.priority, row.enabled);
                }
            }
        }
        Err(error) => tracing::warn!(%error, "could not re-read LLM provider priorities"),
    }
}
