//! Portico's ratelimit service: exact GCRA token buckets (`portico.ratelimit.v1`) in Redis —
//! one atomic script per decision, shared by every replica — or in memory, with a fail mode
//! for a Redis outage; and Envoy's global rate limit API (`envoy.service.ratelimit.v3`) over the
//! same buckets.

use std::{sync::Arc, time::Duration};

use portico_config::Settings;
use portico_grpc::ServerHandle;
use portico_limiter::{Clock, Policies, SystemClock};
use portico_proto::{
    envoy_rls::rate_limit_service_server::RateLimitServiceServer as EnvoyRateLimitServiceServer,
    names, ratelimit::rate_limit_service_server::RateLimitServiceServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

mod envoy;
mod error;
mod grpc;
mod limiter;
mod store;

pub use envoy::Descriptors;
pub use error::Error;
pub use limiter::{Outcome, RateLimiter};

/// Longest a Redis decision may take before the fail mode applies.
const REDIS_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);

/// Serves the ratelimit service on `listener` until `shutdown` is cancelled.
pub async fn serve(
    settings: &Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<ServerHandle, Error> {
    serve_with_clock(settings, listener, shutdown, Arc::new(SystemClock)).await
}

/// [`serve`] with an injected clock (tests move time instead of sleeping).
pub async fn serve_with_clock(
    settings: &Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
    clock: Arc<dyn Clock>,
) -> Result<ServerHandle, Error> {
    let rl = &settings.ratelimit;
    let descriptors = match &rl.descriptors_file {
        Some(path) => Descriptors::load(path)
            .map_err(|e| Error::Config(format!("RATE_LIMIT_DESCRIPTORS_FILE: {e}")))?,
        None => Descriptors::default(),
    };
    let redis = portico_redis::Redis::connect_optional(
        settings.storage.ratelimit_redis_url.as_ref(),
        &settings.storage.redis_key_prefix,
        REDIS_COMMAND_TIMEOUT,
        settings.transport.redis_tls_ca.as_deref(),
        shutdown.clone(),
    )
    .map_err(|e| Error::Config(format!("RATE_LIMIT_REDIS_URL/REDIS_URL: {e}")))?;
    if let Some(redis) = &redis {
        redis.report_up("ratelimit");
    }
    let limiter = RateLimiter::new(
        Policies::from_settings(rl),
        rl.whitelist.clone(),
        redis.clone().map(store::RedisBuckets::new),
        rl.fail_open,
        clock,
    );
    let service = grpc::RateLimitGrpc {
        limiter,
        descriptors: Arc::new(descriptors),
        admin_key: settings.admin_api_key.clone(),
        verifier: portico_tokens::Verifier::for_service(
            settings,
            None,
            &portico_grpc::client::client_tls(settings, &shutdown)
                .map_err(|e| Error::Config(format!("GRPC_TLS_*: {e}")))?,
        )
        .map_err(Error::Config)?,
        allow_untrusted: settings.transport.ratelimit_allow_untrusted,
    };
    let routes = Routes::new(RateLimitServiceServer::new(service.clone()))
        .add_service(EnvoyRateLimitServiceServer::new(service));
    let handle = portico_grpc::serve(
        "ratelimit",
        listener,
        routes,
        &[names::RATELIMIT, names::ENVOY_RLS],
        portico_grpc::Transport::from_settings(
            settings,
            (
                "RATELIMIT_HEALTH_ADDR",
                settings.transport.health_addrs.ratelimit,
            ),
            &shutdown,
        )?,
        shutdown.clone(),
    )
    .await?;
    if let Some(redis) = redis {
        // Not a failure of the service itself (decisions continue under the fail mode): a
        // separate health name, which the edge's readiness reads as "degraded".
        let health = handle.health.clone();
        let mut up = redis.subscribe();
        tokio::spawn(async move {
            loop {
                let serving = *up.borrow_and_update();
                health.set_component(names::RATELIMIT_REDIS, serving).await;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = up.changed() => if changed.is_err() { return },
                }
            }
        });
    }
    Ok(handle)
}
