//! `portico.ratelimit.v1.RateLimitService` and Envoy's `envoy.service.ratelimit.v3` over gRPC.
//! The decisions arrive with the ratelimit issue; until then each RPC answers UNIMPLEMENTED.

use portico_proto::{
    envoy_rls::{self, rate_limit_service_server::RateLimitService as EnvoyRateLimitService},
    ratelimit::{self as pb, rate_limit_service_server::RateLimitService},
};
use tonic::{Request, Response, Status};

/// The gRPC face of the ratelimit service (Portico's API and Envoy's).
#[derive(Debug, Clone, Default)]
pub struct RateLimitGrpc;

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented yet"))
}

#[tonic::async_trait]
impl RateLimitService for RateLimitGrpc {
    async fn check(
        &self,
        _: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        Err(unimplemented("RateLimitService.Check"))
    }

    async fn reset(
        &self,
        _: Request<pb::ResetRequest>,
    ) -> Result<Response<pb::ResetResponse>, Status> {
        Err(unimplemented("RateLimitService.Reset"))
    }
}

#[tonic::async_trait]
impl EnvoyRateLimitService for RateLimitGrpc {
    async fn should_rate_limit(
        &self,
        _: Request<envoy_rls::RateLimitRequest>,
    ) -> Result<Response<envoy_rls::RateLimitResponse>, Status> {
        Err(unimplemented(
            "envoy.service.ratelimit.v3.RateLimitService.ShouldRateLimit",
        ))
    }
}
