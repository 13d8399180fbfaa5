//! Portico's content service (`portico.content.v1.ContentService`): published content for
//! everyone, admin CRUD with optimistic concurrency, and a two-level cache whose entries no
//! replica serves once a write has replaced them.

use std::time::Duration;

use portico_config::{ExposeSecret as _, Settings};
use portico_grpc::ServerHandle;
use portico_migrations::Owner;
use portico_proto::{content::content_service_server::ContentServiceServer, names};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

mod cache;
mod error;
mod grpc;
mod store;

pub use error::Error;

/// Longest a Redis command may take before the cache is bypassed.
const REDIS_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);

/// Connects the database (migrating it when `MIGRATE_ON_BOOT`), and serves the content service
/// on `listener` until `shutdown` is cancelled.
pub async fn serve(
    settings: &Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<ServerHandle, Error> {
    let storage = &settings.storage;
    let db = portico_migrations::connect(
        storage.database_url.expose_secret(),
        storage.migrate_on_boot.then_some(Owner::Content),
        storage.database_acquire_timeout,
    )
    .await?;
    let db = portico_migrations::Db::new(db);
    let redis = portico_redis::Redis::connect_optional(
        storage.redis_url.as_ref(),
        &storage.redis_key_prefix,
        REDIS_COMMAND_TIMEOUT,
        settings.transport.redis_tls_ca.as_deref(),
        shutdown.clone(),
    )
    .map_err(|e| Error::Config(format!("REDIS_URL: {e}")))?;
    if let Some(redis) = &redis {
        redis.report_up("content");
    }
    let cache = cache::Cache::new(redis.clone());
    if let Some(url) = &storage.redis_url {
        cache::subscribe(
            url.expose_secret(),
            settings.transport.redis_tls_ca.as_deref(),
            &storage.redis_key_prefix,
            cache.clone(),
            shutdown.clone(),
        )
        .map_err(|e| Error::Config(format!("REDIS_URL: {e}")))?;
        cache::watch_revision(cache.clone(), shutdown.clone());
    }
    let tls = portico_grpc::client::client_tls(settings, &shutdown)
        .map_err(|e| Error::Config(format!("GRPC_TLS_*: {e}")))?;
    let verifier =
        portico_tokens::Verifier::for_service(settings, redis, &tls).map_err(Error::Config)?;
    let service = grpc::ContentGrpc {
        store: store::Store::new(db.clone()),
        cache,
        admin_key: settings.admin_api_key.clone(),
        verifier,
        shutdown: shutdown.clone(),
    };
    let routes = Routes::new(ContentServiceServer::new(service));
    let handle = portico_grpc::serve(
        "content",
        listener,
        routes,
        &[names::CONTENT],
        portico_grpc::Transport::from_settings(
            settings,
            (
                "CONTENT_HEALTH_ADDR",
                settings.transport.health_addrs.content,
            ),
            &shutdown,
        )?,
        shutdown.clone(),
    )
    .await?;
    handle.health.watch_database(db, shutdown);
    Ok(handle)
}
