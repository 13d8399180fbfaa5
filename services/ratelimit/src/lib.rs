//! Portico's ratelimit service: token buckets (`portico.ratelimit.v1.RateLimitService`) and
//! Envoy's global rate limit API (`envoy.service.ratelimit.v3.RateLimitService`).

use portico_config::Settings;
use portico_grpc::ServerHandle;
use portico_proto::{
    envoy_rls::rate_limit_service_server::RateLimitServiceServer as EnvoyRateLimitServiceServer,
    names, ratelimit::rate_limit_service_server::RateLimitServiceServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

mod error;
mod grpc;

pub use error::Error;

/// Serves the ratelimit service on `listener` until `shutdown` is cancelled.
pub async fn serve(
    _settings: &Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<ServerHandle, Error> {
    let routes = Routes::new(RateLimitServiceServer::new(grpc::RateLimitGrpc))
        .add_service(EnvoyRateLimitServiceServer::new(grpc::RateLimitGrpc));
    let handle = portico_grpc::serve(
        "ratelimit",
        listener,
        routes,
        &[names::RATELIMIT, names::ENVOY_RLS],
        shutdown,
    )
    .await?;
    Ok(handle)
}
