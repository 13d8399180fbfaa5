//! `portico.ratelimit.v1.RateLimitService` and Envoy's `envoy.service.ratelimit.v3` over gRPC:
//! decode, call the limiter, encode.

use std::{net::IpAddr, sync::Arc};

use portico_config::SecretString;
use portico_proto::{
    envoy_rls::{self, rate_limit_service_server::RateLimitService as EnvoyRateLimitService},
    ratelimit::{self as pb, rate_limit_service_server::RateLimitService, reset_request::Target},
};
use tonic::{Request, Response, Status};

use crate::{envoy::Descriptors, limiter::RateLimiter, Error};

/// Longest bucket key accepted.
const MAX_KEY_LEN: usize = 512;

/// The gRPC face of the ratelimit service (Portico's API and Envoy's).
#[derive(Debug, Clone)]
pub struct RateLimitGrpc {
    pub(crate) limiter: RateLimiter,
    pub(crate) descriptors: Arc<Descriptors>,
    pub(crate) admin_key: Option<SecretString>,
    /// `RATELIMIT_ALLOW_UNTRUSTED`: callers other than a trusted peer may spend buckets.
    pub(crate) allow_untrusted: bool,
    pub(crate) verifier: portico_tokens::Verifier,
}

impl RateLimitGrpc {
    /// Spending a bucket is the edge's (or Envoy's) job: a caller that is not a trusted peer
    /// could otherwise drain another client's bucket. Others need admin credentials, unless
    /// `RATELIMIT_ALLOW_UNTRUSTED`.
    pub(crate) async fn require_trusted<T>(&self, request: &Request<T>) -> Result<(), Error> {
        if self.allow_untrusted || portico_grpc::Peer::of(request).trusted {
            return Ok(());
        }
        self.require_admin(request).await
    }

    /// `x-admin-key` equal to `ADMIN_API_KEY`, or a bearer token with the admin role.
    async fn require_admin<T>(&self, request: &Request<T>) -> Result<(), Error> {
        portico_tokens::authorize_admin(request.metadata(), self.admin_key.as_ref(), &self.verifier)
            .await
            .map(|_| ())
            .map_err(|refusal| match refusal {
                portico_tokens::AdminRefusal::Unauthenticated(m) => Error::Unauthenticated(m),
                portico_tokens::AdminRefusal::PermissionDenied(m) => Error::PermissionDenied(m),
            })
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimitGrpc {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        self.require_trusted(&request).await?;
        let request = request.into_inner();
        if request.key.is_empty() || request.key.len() > MAX_KEY_LEN {
            return Err(Status::invalid_argument(format!(
                "key must be 1 to {MAX_KEY_LEN} bytes"
            )));
        }
        let client_ip = match request.client_ip.as_str() {
            "" => None,
            raw => Some(raw.parse::<IpAddr>().map_err(|_| {
                Status::invalid_argument(format!("client_ip `{raw}` is not an IP address"))
            })?),
        };
        let outcome = if request.policy == crate::limiter::API_KEY_POLICY {
            // An API key's own rate: the edge sends the shape it read from the key's record.
            if request.capacity == 0 || request.window_ms == 0 {
                return Err(Status::invalid_argument(
                    "policy `apikey` needs capacity and window_ms",
                ));
            }
            let limit = portico_limiter::Limit::per_window(
                request.capacity,
                std::time::Duration::from_millis(request.window_ms),
            );
            self.limiter
                .check_api_key(&request.key, limit, request.cost.max(1), client_ip)
                .await?
        } else {
            self.limiter
                .check(
                    &request.policy,
                    &request.key,
                    request.cost.max(1),
                    client_ip,
                )
                .await?
        };
        let d = outcome.decision;
        Ok(Response::new(pb::CheckResponse {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            reset_after_ms: d.reset_after_ms,
            retry_after_ms: d.retry_after_ms,
            degraded: outcome.degraded,
        }))
    }

    async fn reset(
        &self,
        request: Request<pb::ResetRequest>,
    ) -> Result<Response<pb::ResetResponse>, Status> {
        self.require_admin(&request).await?;
        let removed = match request.into_inner().target {
            Some(Target::Key(key)) if !key.is_empty() => self.limiter.reset_key(&key).await?,
            Some(Target::Prefix(prefix)) => self.limiter.reset_prefix(&prefix).await?,
            _ => {
                return Err(Status::invalid_argument(
                    "give a non-empty `key` or a `prefix`",
                ))
            }
        };
        tracing::info!(removed, "rate limit buckets reset");
        Ok(Response::new(pb::ResetResponse { removed }))
    }

    async fn get_bucket(
        &self,
        request: Request<pb::GetBucketRequest>,
    ) -> Result<Response<pb::GetBucketResponse>, Status> {
        self.require_admin(&request).await?;
        let pb::GetBucketRequest { policy, key } = request.into_inner();
        // Characters, as the OpenAPI document states it (a key Check took is at most that).
        if key.is_empty() || key.chars().count() > MAX_KEY_LEN {
            return Err(Status::invalid_argument(format!(
                "key must be 1 to {MAX_KEY_LEN} characters"
            )));
        }
        let (d, bucket) = self.limiter.peek(&policy, &key).await?;
        Ok(Response::new(pb::GetBucketResponse {
            limit: d.limit,
            remaining: d.remaining,
            reset_after_ms: d.reset_after_ms,
            reset_after_seconds: d.reset_after_ms.div_ceil(1000),
            retry_after_ms: d.retry_after_ms,
            bucket,
            policy,
            key,
        }))
    }
}

#[tonic::async_trait]
impl EnvoyRateLimitService for RateLimitGrpc {
    async fn should_rate_limit(
        &self,
        request: Request<envoy_rls::RateLimitRequest>,
    ) -> Result<Response<envoy_rls::RateLimitResponse>, Status> {
        // Envoy is trusted by its certificate's name (`GRPC_TRUSTED_PEERS`).
        self.require_trusted(&request).await?;
        let response =
            crate::envoy::should_rate_limit(&self.descriptors, &self.limiter, request.get_ref())
                .await?;
        Ok(Response::new(response))
    }
}
