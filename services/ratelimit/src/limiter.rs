//! The decision path: whitelist, then Redis (shared by every replica) or memory, and the fail
//! mode when Redis is unreachable — `open` falls back to this replica's in-memory buckets (a
//! ceiling, not a free pass), `closed` denies.

use std::{net::IpAddr, sync::Arc, sync::OnceLock};

use ipnet::IpNet;
use portico_limiter::{bucket_key, Clock, Decision, Limit, MemoryStore, Policies};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

use crate::{store::RedisBuckets, Error};

/// Longest a caller is told to wait when Redis is down and the fail mode is `closed`.
const FAIL_CLOSED_RETRY_MS: u64 = 1000;
/// Most buckets held in memory (each is a key and two numbers).
const MEMORY_MAX_KEYS: u64 = 1_000_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    policy: String,
    result: &'static str,
}

struct Metrics {
    decisions: Family<DecisionLabels, Counter>,
    fallback: Counter,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let metrics = Metrics {
            decisions: Family::default(),
            fallback: Counter::default(),
        };
        portico_telemetry::metrics::register(
            "ratelimit_decisions",
            "Rate limit decisions by policy and result (allowed, limited, whitelisted)",
            metrics.decisions.clone(),
        );
        portico_telemetry::metrics::register(
            "ratelimit_redis_fallback",
            "Decisions taken without Redis because it was unreachable (fail mode applied)",
            metrics.fallback.clone(),
        );
        metrics
    })
}

/// A decision and whether it was made without Redis.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// The decision.
    pub decision: Decision,
    /// True when Redis was configured but unreachable.
    pub degraded: bool,
}

/// Rate limiting for every policy and every Envoy descriptor.
#[derive(Clone)]
pub struct RateLimiter {
    policies: Policies,
    whitelist: Arc<[IpNet]>,
    redis: Option<RedisBuckets>,
    memory: MemoryStore,
    fail_open: bool,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("policies", &self.policies)
            .field("redis", &self.redis.is_some())
            .field("fail_open", &self.fail_open)
            .finish()
    }
}

impl RateLimiter {
    /// A limiter over `redis` (or memory only when `None`).
    pub fn new(
        policies: Policies,
        whitelist: Vec<IpNet>,
        redis: Option<RedisBuckets>,
        fail_open: bool,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            policies,
            whitelist: whitelist.into(),
            redis,
            memory: MemoryStore::new(MEMORY_MAX_KEYS, clock.clone()),
            fail_open,
            clock,
        }
    }

    /// The shape of the policy called `name`.
    fn policy(&self, name: &str) -> Result<Limit, Error> {
        self.policies.get(name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown policy `{name}`: expected global, auth or chat"
            ))
        })
    }

    /// Whether `ip` is never limited.
    pub fn is_whitelisted(&self, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| self.whitelist.iter().any(|net| net.contains(&ip)))
    }

    /// The Redis store, when configured.
    pub fn redis(&self) -> Option<&RedisBuckets> {
        self.redis.as_ref()
    }

    /// Takes `cost` tokens from `policy`'s bucket for `key`.
    pub async fn check(
        &self,
        policy: &str,
        key: &str,
        cost: u32,
        client_ip: Option<IpAddr>,
    ) -> Result<Outcome, Error> {
        let limit = self.policy(policy)?;
        if cost > limit.capacity {
            return Err(Error::InvalidArgument(format!(
                "cost {cost} exceeds the `{policy}` bucket's capacity of {}",
                limit.capacity
            )));
        }
        if self.is_whitelisted(client_ip) {
            count(policy, "whitelisted");
            return Ok(Outcome {
                decision: Decision::unlimited(limit.capacity),
                degraded: false,
            });
        }
        let outcome = self
            .check_bucket(&bucket_key(policy, key), limit, cost)
            .await;
        count(
            policy,
            if outcome.decision.allowed {
                "allowed"
            } else {
                "limited"
            },
        );
        Ok(outcome)
    }

    /// Takes `cost` tokens from bucket `bucket` shaped by `limit`.
    pub async fn check_bucket(&self, bucket: &str, limit: Limit, cost: u32) -> Outcome {
        let Some(redis) = &self.redis else {
            return Outcome {
                decision: self.memory.check(bucket, limit, cost),
                degraded: false,
            };
        };
        if redis.redis().is_up() {
            match redis.check(bucket, limit, cost, self.clock.as_ref()).await {
                Ok(decision) => {
                    return Outcome {
                        decision,
                        degraded: false,
                    }
                }
                Err(error) => redis.redis().mark_down(&error),
            }
        }
        metrics().fallback.inc();
        let decision = if self.fail_open {
            self.memory.check(bucket, limit, cost)
        } else {
            Decision {
                allowed: false,
                limit: limit.capacity,
                remaining: 0,
                reset_after_ms: FAIL_CLOSED_RETRY_MS,
                retry_after_ms: FAIL_CLOSED_RETRY_MS,
            }
        };
        Outcome {
            decision,
            degraded: true,
        }
    }

    /// Reads `policy`'s bucket for `key` without taking a token: from Redis when it is
    /// configured (the buckets every replica shares), else from memory. The bucket's stored key
    /// comes back with it.
    pub async fn peek(&self, policy: &str, key: &str) -> Result<(Decision, String), Error> {
        let limit = self.policy(policy)?;
        let bucket = bucket_key(policy, key);
        let decision = match &self.redis {
            None => self.memory.peek(&bucket, limit),
            Some(redis) => {
                if !redis.redis().is_up() {
                    return Err(Error::Unavailable(
                        "the rate limit store is unreachable; retry shortly".into(),
                    ));
                }
                match redis.peek(&bucket, limit, self.clock.as_ref()).await {
                    Ok(decision) => decision,
                    Err(error) => {
                        redis.redis().mark_down(&error);
                        return Err(Error::Redis(error));
                    }
                }
            }
        };
        Ok((decision, bucket))
    }

    /// Removes one bucket (`{policy}:{key}`); returns how many were removed.
    pub async fn reset_key(&self, key: &str) -> Result<u64, Error> {
        let bucket = format!(
            "ratelimit:{}",
            key.strip_prefix("ratelimit:").unwrap_or(key)
        );
        let mut removed = self.memory.reset_key(&bucket);
        if let Some(redis) = &self.redis {
            removed += redis.reset_key(&bucket).await.map_err(Error::Redis)?;
        }
        Ok(removed)
    }

    /// Removes every bucket whose `{policy}:{key}` starts with `prefix` ("" = all).
    pub async fn reset_prefix(&self, prefix: &str) -> Result<u64, Error> {
        let prefix = format!(
            "ratelimit:{}",
            prefix.strip_prefix("ratelimit:").unwrap_or(prefix)
        );
        let mut removed = self.memory.reset_prefix(&prefix);
        if let Some(redis) = &self.redis {
            removed += redis.reset_prefix(&prefix).await.map_err(Error::Redis)?;
        }
        Ok(removed)
    }
}

fn count(policy: &str, result: &'static str) {
    metrics()
        .decisions
        .get_or_create(&DecisionLabels {
            policy: policy.to_owned(),
            result,
        })
        .inc();
}

/// The policy of API keys' own request rates: one bucket per key id, shaped by the key.
pub const API_KEY_POLICY: &str = "apikey";

impl RateLimiter {
    /// Takes `cost` tokens from the bucket of API key `key_id` (policy `apikey`), shaped by
    /// the key's record as the edge read it from auth.
    pub async fn check_api_key(
        &self,
        key_id: &str,
        limit: Limit,
        cost: u32,
        client_ip: Option<IpAddr>,
    ) -> Result<Outcome, Error> {
        if cost > limit.capacity {
            return Err(Error::InvalidArgument(format!(
                "cost {cost} exceeds the key's capacity of {}",
                limit.capacity
            )));
        }
        if self.is_whitelisted(client_ip) {
            count(API_KEY_POLICY, "whitelisted");
            return Ok(Outcome {
                decision: Decision::unlimited(limit.capacity),
                degraded: false,
            });
        }
        let outcome = self
            .check_bucket(&bucket_key(API_KEY_POLICY, key_id), limit, cost)
            .await;
        count(
            API_KEY_POLICY,
            if outcome.decision.allowed {
                "allowed"
            } else {
                "limited"
            },
        );
        Ok(outcome)
    }
}
