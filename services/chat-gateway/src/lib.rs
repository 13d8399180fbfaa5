//! Portico's chat gateway: LLM providers behind failover (`portico.chat.v1.ChatService`).

use std::time::Duration;

use portico_config::{ExposeSecret as _, Settings};
use portico_grpc::ServerHandle;
use portico_migrations::Owner;
use portico_proto::{chat::chat_service_server::ChatServiceServer, names};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

mod error;
mod grpc;

pub use error::Error;

/// How often the database is probed for the health status.
const DATABASE_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Connects the database (migrating it when `MIGRATE_ON_BOOT`), and serves the chat gateway on
/// `listener` until `shutdown` is cancelled.
pub async fn serve(
    settings: &Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<ServerHandle, Error> {
    let storage = &settings.storage;
    let db = portico_migrations::connect(
        storage.database_url.expose_secret(),
        storage.migrate_on_boot.then_some(Owner::Chat),
    )
    .await?;
    let routes = Routes::new(ChatServiceServer::new(grpc::ChatGrpc { _db: db.clone() }));
    let handle = portico_grpc::serve(
        "chat-gateway",
        listener,
        routes,
        &[names::CHAT],
        shutdown.clone(),
    )
    .await?;
    handle
        .health
        .watch_dependency("database", DATABASE_PROBE_INTERVAL, shutdown, move || {
            let db = db.clone();
            async move { db.ping().await.is_ok() }
        });
    Ok(handle)
}
