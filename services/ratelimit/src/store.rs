//! The Redis bucket store: one EVALSHA of `gcra.lua` per decision (re-loaded on NOSCRIPT), keys
//! `{REDIS_KEY_PREFIX}ratelimit:{policy}:{key}` with TTL = time to full refill.

use fred::{prelude::*, types::scripts::Script};
use portico_limiter::{Clock, Decision, Limit};
use portico_redis::{fred, Redis};

const GCRA: &str = include_str!("gcra.lua");
/// Reads a bucket without writing: its stored TAT ("" when absent) and the server's `TIME`.
const PEEK: &str = r#"
local t = redis.call('TIME')
return {redis.call('GET', KEYS[1]) or '', t[1], t[2]}
"#;

/// Buckets in Redis, shared by every replica.
#[derive(Debug, Clone)]
pub struct RedisBuckets {
    redis: Redis,
    script: Script,
    peek: Script,
}

impl RedisBuckets {
    /// Buckets in `redis`.
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            script: Script::from_lua(GCRA),
            peek: Script::from_lua(PEEK),
        }
    }

    /// The connection.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// One decision on `bucket` (unprefixed key). `clock` supplies "now" unless it is the system
    /// clock, in which case Redis's own `TIME` does, so replicas never disagree about time.
    pub async fn check(
        &self,
        bucket: &str,
        limit: Limit,
        cost: u32,
        clock: &dyn Clock,
    ) -> Result<Decision, Error> {
        let now = if clock.is_system() {
            String::new()
        } else {
            clock.now_micros().to_string()
        };
        let args: Vec<String> = vec![
            format!("{:.0}", limit.interval_micros()),
            limit.capacity.to_string(),
            cost.to_string(),
            now,
        ];
        let reply: Vec<i64> = self
            .script
            .evalsha_with_reload(self.redis.client(), vec![self.redis.key(bucket)], args)
            .await?;
        let [allowed, remaining, reset_after_ms, retry_after_ms] = reply[..] else {
            return Err(Error::new(
                ErrorKind::Parse,
                format!("unexpected script reply {reply:?}"),
            ));
        };
        Ok(Decision {
            allowed: allowed == 1,
            limit: limit.capacity,
            remaining: u32::try_from(remaining).unwrap_or(0),
            reset_after_ms: u64::try_from(reset_after_ms).unwrap_or(0),
            retry_after_ms: u64::try_from(retry_after_ms).unwrap_or(0),
        })
    }

    /// Bucket `bucket` (unprefixed key) as it is now, without taking a token: one read-only
    /// script, "now" from Redis's `TIME` unless `clock` is injected (as in [`Self::check`]).
    pub async fn peek(
        &self,
        bucket: &str,
        limit: Limit,
        clock: &dyn Clock,
    ) -> Result<Decision, Error> {
        let reply: Vec<String> = self
            .peek
            .evalsha_with_reload(
                self.redis.client(),
                vec![self.redis.key(bucket)],
                Vec::<String>::new(),
            )
            .await?;
        let [stored, seconds, micros] = &reply[..] else {
            return Err(Error::new(
                ErrorKind::Parse,
                format!("unexpected script reply {reply:?}"),
            ));
        };
        let number = |text: &str| {
            text.parse::<f64>()
                .map_err(|_| Error::new(ErrorKind::Parse, format!("unexpected number `{text}`")))
        };
        let now = if clock.is_system() {
            number(seconds)? * 1_000_000.0 + number(micros)?
        } else {
            clock.now_micros() as f64
        };
        let tat = match stored.as_str() {
            "" => None,
            text => Some(number(text)?),
        };
        Ok(portico_limiter::peek(tat, now, limit))
    }

    /// Deletes one bucket; returns how many keys were removed.
    pub async fn reset_key(&self, bucket: &str) -> Result<u64, Error> {
        self.redis.client().unlink(self.redis.key(bucket)).await
    }

    /// Deletes every bucket whose unprefixed key starts with `prefix`.
    pub async fn reset_prefix(&self, prefix: &str) -> Result<u64, Error> {
        self.redis.unlink_prefix(prefix).await
    }
}
