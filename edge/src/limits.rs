//! Rate limit enforcement at the edge (DESIGN §5, §8): every non-operational route through the
//! `global` policy keyed by client IP. The decision is the ratelimit service's, asked with a
//! tight deadline; when the service cannot answer in time the fail mode applies here too —
//! `open` decides with this edge's own in-memory buckets (a ceiling, not a free pass), `closed`
//! refuses with 503.

use std::{net::IpAddr, sync::Arc};

use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use portico_config::RateLimitSettings;
use portico_limiter::{bucket_key, Decision, MemoryStore, Policies, SystemClock};
use portico_proto::ratelimit::{rate_limit_service_client::RateLimitServiceClient, CheckRequest};
use portico_telemetry::{metrics, RequestContext};
use tonic::{transport::Channel, Code};

use crate::{backends, ApiError};

/// Most buckets the edge's fallback keeps.
const FALLBACK_MAX_KEYS: u64 = 100_000;

/// The edge's view of rate limiting.
#[derive(Clone)]
pub struct EdgeLimiter {
    channel: Channel,
    policies: Policies,
    whitelist: Arc<[IpNet]>,
    fallback: MemoryStore,
    fail_open: bool,
    timeout: std::time::Duration,
}

/// A refusal: the error to answer with and the decision whose headers it carries.
#[derive(Debug)]
pub struct Refusal {
    /// 429 or 503.
    pub error: ApiError,
    /// The decision, for `RateLimit-*` headers (absent when no decision could be made).
    pub decision: Option<Decision>,
}

impl EdgeLimiter {
    /// Enforcement through the ratelimit service on `channel`.
    pub fn new(channel: Channel, settings: &RateLimitSettings) -> Self {
        Self {
            channel,
            policies: Policies::from_settings(settings),
            whitelist: settings.whitelist.clone().into(),
            fallback: MemoryStore::new(FALLBACK_MAX_KEYS, Arc::new(SystemClock)),
            fail_open: settings.fail_open,
            timeout: settings.check_timeout,
        }
    }

    /// Takes one token from `policy`'s bucket for `key`. `Ok(None)`: not limited (whitelisted).
    pub async fn check(
        &self,
        policy: &'static str,
        key: &str,
        client_ip: IpAddr,
        context: &RequestContext,
    ) -> Result<Option<Decision>, Refusal> {
        if self.whitelist.iter().any(|net| net.contains(&client_ip)) {
            return Ok(None);
        }
        let request = backends::request(
            CheckRequest {
                key: key.to_owned(),
                policy: policy.to_owned(),
                cost: 1,
                client_ip: client_ip.to_string(),
            },
            context,
            &backends::Forwarded::client(client_ip),
            self.timeout,
        );
        let mut client = RateLimitServiceClient::new(self.channel.clone());
        let answer = tokio::time::timeout(self.timeout, client.check(request)).await;
        let decision = match answer {
            Ok(Ok(response)) => {
                backends::record("ratelimit", "Check", Code::Ok);
                let r = response.into_inner();
                Decision {
                    allowed: r.allowed,
                    limit: r.limit,
                    remaining: r.remaining,
                    reset_after_ms: r.reset_after_ms,
                    retry_after_ms: r.retry_after_ms,
                }
            }
            failure => {
                let code = match &failure {
                    Ok(Err(status)) => status.code(),
                    _ => Code::DeadlineExceeded,
                };
                backends::record("ratelimit", "Check", code);
                tracing::warn!(
                    ?code,
                    policy,
                    fail_open = self.fail_open,
                    "ratelimit service did not decide"
                );
                if !self.fail_open {
                    return Err(Refusal {
                        error: ApiError::new(
                            Code::Unavailable,
                            "the rate limiter is unavailable; retry shortly",
                        )
                        .with_retry_after(1),
                        decision: None,
                    });
                }
                let Some(limit) = self.policies.get(policy) else {
                    return Ok(None);
                };
                self.fallback.check(&bucket_key(policy, key), limit, 1)
            }
        };
        if decision.allowed {
            return Ok(Some(decision));
        }
        metrics::http()
            .rate_limited
            .get_or_create(&metrics::PolicyLabels {
                policy: policy.to_owned(),
            })
            .inc();
        Err(Refusal {
            error: ApiError::new(
                Code::ResourceExhausted,
                format!("rate limit `{policy}` exceeded; retry after the time in Retry-After"),
            )
            .with_retry_after(decision.retry_after_ms.div_ceil(1000).max(1)),
            decision: Some(decision),
        })
    }
}

/// Adds `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds).
pub fn apply_headers(headers: &mut HeaderMap, decision: &Decision) {
    headers.insert("ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(decision.remaining));
    headers.insert(
        "ratelimit-reset",
        HeaderValue::from(decision.reset_after_ms.div_ceil(1000)),
    );
}
