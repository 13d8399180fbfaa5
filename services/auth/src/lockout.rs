//! Login lockout per email + IP, and the access-token denylist: in Redis under the operators'
//! keys (`login_attempt:{email}:{ip}`, `lockout:{email}:{ip}`, `token:blacklist:{jti}`), or in the
//! database without Redis. An attempt's slot is reserved *before* its password is checked, so N
//! parallel wrong passwords never get more than the allowed number of checks. A lockout's end
//! is stored in its value (its TTL only cleans up), so time is the service's clock.

use portico_redis::{
    fred::{prelude::*, types::scripts::Script},
    Redis,
};

use crate::store::Store;

/// Reserves an attempt unless a lockout is active. Returns {attempt number, 0} or {-1, locked_until}.
const RESERVE: &str = r#"
local locked = redis.call('GET', KEYS[2])
if locked and tonumber(locked) > tonumber(ARGV[1]) then
  return {-1, tonumber(locked)}
end
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {n, 0}
"#;

/// Gives back an attempt whose password was never checked; never below zero, never a key
/// without its TTL.
const RELEASE: &str = r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"#;

/// The outcome of reserving an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The caller may check the password; this is attempt `n` of the window.
    Allowed(i64),
    /// Locked until this time (ms); or over the attempt budget of the window.
    Refused { until_ms: i64 },
}

/// Where lockouts and the denylist live.
#[derive(Debug, Clone)]
pub enum Guards {
    /// Redis (shared by replicas, the operators' keys).
    Redis {
        redis: Redis,
        reserve: Script,
        release: Script,
    },
    /// The auth database.
    Database(Store),
}

impl Guards {
    pub fn redis(redis: Redis) -> Self {
        Self::Redis {
            redis,
            reserve: Script::from_lua(RESERVE),
            release: Script::from_lua(RELEASE),
        }
    }

    /// Fails at once while Redis is known down, instead of waiting out a command timeout.
    fn reachable(&self) -> Result<(), String> {
        match self {
            Guards::Redis { redis, .. } if !redis.is_up() => {
                Err("redis unreachable (known down until the next successful probe)".into())
            }
            _ => Ok(()),
        }
    }

    /// Reserves one attempt; `max` attempts per `window_ms`.
    pub async fn reserve(
        &self,
        email: &str,
        ip: &str,
        max: i64,
        now: i64,
        window_ms: i64,
    ) -> Result<Attempt, String> {
        self.reachable()?;
        let (n, locked_until) = match self {
            Guards::Redis { redis, reserve, .. } => {
                let keys = vec![
                    redis.key(&attempt_key(email, ip)),
                    redis.key(&lockout_key(email, ip)),
                ];
                let reply: Vec<i64> = reserve
                    .evalsha_with_reload(
                        redis.client(),
                        keys,
                        vec![now.to_string(), window_ms.to_string()],
                    )
                    .await
                    .map_err(|e| failed(redis, &e))?;
                match reply[..] {
                    [-1, until] => return Ok(Attempt::Refused { until_ms: until }),
                    [n, _] => (n, None),
                    _ => return Err(format!("unexpected reply {reply:?}")),
                }
            }
            Guards::Database(store) => {
                if let Some(until) = store
                    .locked_until(email, ip)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    if until > now {
                        return Ok(Attempt::Refused { until_ms: until });
                    }
                }
                store
                    .reserve_attempt(email, ip, now, window_ms)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        if let Some(until) = locked_until.filter(|until| *until > now) {
            return Ok(Attempt::Refused { until_ms: until });
        }
        if n > max {
            // Over budget before the lockout was written (parallel attempts): refuse unchecked.
            return Ok(Attempt::Refused {
                until_ms: now + window_ms,
            });
        }
        Ok(Attempt::Allowed(n))
    }

    /// Gives back a reserved attempt that could not be checked (the account store or the
    /// hash pool failed): only a verified wrong password may count against the owner.
    pub async fn release(&self, email: &str, ip: &str) -> Result<(), String> {
        self.reachable()?;
        match self {
            Guards::Redis { redis, release, .. } => release
                .evalsha_with_reload::<i64, _, _>(
                    redis.client(),
                    vec![redis.key(&attempt_key(email, ip))],
                    Vec::<String>::new(),
                )
                .await
                .map(|_| ())
                .map_err(|e| failed(redis, &e)),
            Guards::Database(store) => store
                .release_attempt(email, ip)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Locks `email`+`ip` until `until_ms`.
    pub async fn lock(&self, email: &str, ip: &str, now: i64, until_ms: i64) -> Result<(), String> {
        self.reachable()?;
        match self {
            Guards::Redis { redis, .. } => {
                let ttl = (until_ms - now).max(1);
                redis
                    .client()
                    .set::<(), _, _>(
                        redis.key(&lockout_key(email, ip)),
                        until_ms,
                        Some(Expiration::PX(ttl)),
                        None,
                        false,
                    )
                    .await
                    .map_err(|e| failed(redis, &e))?;
                redis
                    .client()
                    .del::<(), _>(redis.key(&attempt_key(email, ip)))
                    .await
                    .map_err(|e| failed(redis, &e))
            }
            Guards::Database(store) => store
                .lock(email, ip, now, until_ms)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Forgets the attempts (a successful login).
    pub async fn succeeded(&self, email: &str, ip: &str) -> Result<(), String> {
        self.reachable()?;
        match self {
            Guards::Redis { redis, .. } => redis
                .client()
                .del::<(), _>(redis.key(&attempt_key(email, ip)))
                .await
                .map_err(|e| failed(redis, &e)),
            Guards::Database(store) => store
                .clear_attempts(email, Some(ip))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }

    /// Removes lockouts and attempts of `email` (one IP, or all); returns entries removed.
    pub async fn unlock(&self, email: &str, ip: Option<&str>) -> Result<u32, String> {
        self.reachable()?;
        let removed = match self {
            Guards::Redis { redis, .. } => match ip {
                Some(ip) => redis
                    .client()
                    .del::<u64, _>(vec![
                        redis.key(&lockout_key(email, ip)),
                        redis.key(&attempt_key(email, ip)),
                    ])
                    .await
                    .map_err(|e| failed(redis, &e))?,
                None => {
                    let mut removed = 0;
                    for prefix in [
                        format!("lockout:{email}:"),
                        format!("login_attempt:{email}:"),
                    ] {
                        removed += redis
                            .unlink_prefix(&prefix)
                            .await
                            .map_err(|e| failed(redis, &e))?;
                    }
                    removed
                }
            },
            Guards::Database(store) => store
                .clear_attempts(email, ip)
                .await
                .map_err(|e| e.to_string())?,
        };
        Ok(u32::try_from(removed).unwrap_or(u32::MAX))
    }

    /// Denylists `jti` until `expires_at_ms`.
    pub async fn deny(&self, jti: &str, now: i64, expires_at_ms: i64) -> Result<(), String> {
        self.reachable()?;
        let ttl = (expires_at_ms - now).max(1);
        match self {
            Guards::Redis { redis, .. } => redis
                .client()
                .set::<(), _, _>(
                    redis.key(&denylist_key(jti)),
                    "1",
                    Some(Expiration::PX(ttl)),
                    None,
                    false,
                )
                .await
                .map_err(|e| failed(redis, &e)),
            Guards::Database(store) => store
                .deny(jti, expires_at_ms)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Whether `jti` is denylisted (also by an operator's `redis-cli setex`).
    pub async fn is_denied(&self, jti: &str, now: i64) -> Result<bool, String> {
        self.reachable()?;
        match self {
            Guards::Redis { redis, .. } => redis
                .client()
                .exists::<u32, _>(redis.key(&denylist_key(jti)))
                .await
                .map(|n| n > 0)
                .map_err(|e| failed(redis, &e)),
            Guards::Database(store) => store.is_denied(jti, now).await.map_err(|e| e.to_string()),
        }
    }
}

/// Marks Redis down after a failed command (the next calls fail fast) and says why.
fn failed(redis: &Redis, error: &Error) -> String {
    redis.mark_down(error);
    error.to_string()
}

fn attempt_key(email: &str, ip: &str) -> String {
    format!("login_attempt:{email}:{ip}")
}

fn lockout_key(email: &str, ip: &str) -> String {
    format!("lockout:{email}:{ip}")
}

fn denylist_key(jti: &str) -> String {
    format!("token:blacklist:{jti}")
}
