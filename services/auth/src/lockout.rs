//! Login lockout, and the access-token denylist. Two guards decide whether a password is
//! checked at all:
//!
//! - per email + client network (an IPv4 address, or an IPv6 /64): `AUTH_LOGIN_MAX_ATTEMPTS`
//!   failures lock that network out of that account for `AUTH_LOGIN_LOCKOUT_MINUTES`;
//! - per account, from every network at once: past `AUTH_ACCOUNT_MAX_FAILURES` failures, the
//!   account's checked attempts are spaced by an exponential back-off (1 s, 2 s, 4 s, … at most
//!   `AUTH_ACCOUNT_BACKOFF_MAX`), so guesses spread over many addresses are slowed to a trickle.
//!   A refused attempt never lengthens the gap, so an attacker cannot push it beyond the cap,
//!   and networks the owner has logged in from (30 days) skip this ceiling: a flood from
//!   elsewhere cannot lock the owner out.
//!
//! In Redis under the operators' keys (`login_attempt:{email}:{network}`,
//! `lockout:{email}:{network}`, the account's `login_attempt:{email}:*` and `lockout:{email}:*`,
//! `login_known:{email}:{network}`, `token:blacklist:{jti}`), or in the database without Redis
//! (the `lockouts` table: network rows, the `*` row, `+{network}` rows for known networks). An
//! attempt's slot is reserved *before* its password is checked, so N parallel wrong passwords
//! never get more than the allowed number of checks. A lockout's end is stored in its value (its
//! TTL only cleans up), so time is the service's clock.

use portico_redis::{
    fred::{prelude::*, types::scripts::Script},
    Redis,
};

use crate::store::Store;

/// Most `lockout:` keys one listing reads from Redis.
pub const MAX_SCANNED_LOCKOUTS: usize = 10_000;
/// The account-wide row or key suffix (never a network).
pub(crate) const ACCOUNT: &str = "*";
/// How long a network the owner logged in from stays exempt from the account ceiling.
const KNOWN_NETWORK_MS: i64 = 30 * 24 * 3600 * 1000;
/// The back-off's first gap.
const BACKOFF_BASE_MS: i64 = 1000;

/// Reserves an attempt unless a lockout is active. KEYS: network attempts, network lockout,
/// account attempts, account's next allowed time, known-network marker. ARGV: now, window,
/// max per network, account threshold, back-off base, back-off cap. Returns {attempt number, 0,
/// 1 when the account's count took it} or {-1, locked_until}.
const RESERVE: &str = r#"
local now = tonumber(ARGV[1])
local locked = redis.call('GET', KEYS[2])
if locked and tonumber(locked) > now then
  return {-1, tonumber(locked)}
end
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[3]) or redis.call('EXISTS', KEYS[5]) == 1 then
  return {n, 0, 0}
end
local a = redis.call('INCR', KEYS[3])
-- Sliding: the account's count ends one quiet window after its last attempt.
redis.call('PEXPIRE', KEYS[3], ARGV[2])
local threshold = tonumber(ARGV[4])
if a > threshold then
  local next = tonumber(redis.call('GET', KEYS[4]) or '0')
  if next > now then
    -- Not checked, so it costs neither budget.
    redis.call('DECR', KEYS[3])
    redis.call('DECR', KEYS[1])
    return {-1, next}
  end
  local delay = math.min(tonumber(ARGV[5]) * 2 ^ math.min(a - threshold - 1, 40), tonumber(ARGV[6]))
  redis.call('SET', KEYS[4], string.format('%d', now + delay), 'PX',
    string.format('%d', delay + tonumber(ARGV[2])))
end
return {n, 0, 1}
"#;

/// Gives back an attempt whose password was never checked; never below zero, never a key
/// without its TTL. KEYS: network attempts, account attempts.
const RELEASE: &str = r#"
for _, key in ipairs(KEYS) do
  local n = tonumber(redis.call('GET', key) or '0')
  if n > 0 then redis.call('DECR', key) end
end
return 0
"#;

/// A successful login: forgets the network's and the account's attempts and remembers the
/// network. KEYS: network attempts, account attempts, account next, known marker. ARGV: ttl.
const SUCCEEDED: &str = r#"
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('SET', KEYS[4], '1', 'PX', ARGV[1])
return 0
"#;

/// Counts one event in a fixed window. KEYS: the counter. ARGV: window. Returns {count, ms
/// left in the window}.
const HIT: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {n, left}
"#;

/// The account-wide ceiling's settings.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    /// Failures of one account (any network) within the window before back-off.
    pub threshold: i64,
    /// The longest gap between two checked attempts.
    pub cap_ms: i64,
}

impl Ceiling {
    /// The gap after attempt `attempt` of the window (past the threshold).
    fn delay_ms(&self, attempt: i64) -> i64 {
        let doublings = (attempt - self.threshold - 1).clamp(0, 40) as u32;
        BACKOFF_BASE_MS
            .saturating_mul(1_i64 << doublings)
            .min(self.cap_ms)
    }
}

/// One lockout in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    /// The normalised email.
    pub email: String,
    /// The network locked out, or `*` for the account-wide back-off.
    pub network: String,
    /// When it ends (ms since the epoch, the service's clock).
    pub until_ms: i64,
}

/// The outcome of reserving an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The caller may check the password; this is attempt `n` of the window, and whether the
    /// account's count took it too (not for a network the owner is known from).
    Allowed(i64, bool),
    /// Locked until this time (ms); or over the attempt budget of the window.
    Refused { until_ms: i64 },
}

/// Where lockouts and the denylist live.
// One per process, never moved on a hot path: the scripts stay inline.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Guards {
    /// Redis (shared by replicas, the operators' keys).
    Redis {
        redis: Redis,
        reserve: Script,
        release: Script,
        succeeded: Script,
        hit: Script,
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
            succeeded: Script::from_lua(SUCCEEDED),
            hit: Script::from_lua(HIT),
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

    /// Reserves one attempt of `network` at `email`: `max` per network and `window_ms`, under
    /// the account's `ceiling`.
    pub async fn reserve(
        &self,
        email: &str,
        network: &str,
        max: i64,
        now: i64,
        window_ms: i64,
        ceiling: &Ceiling,
    ) -> Result<Attempt, String> {
        self.reachable()?;
        let (n, counted) = match self {
            Guards::Redis { redis, reserve, .. } => {
                let keys = vec![
                    redis.key(&attempt_key(email, network)),
                    redis.key(&lockout_key(email, network)),
                    redis.key(&attempt_key(email, ACCOUNT)),
                    redis.key(&lockout_key(email, ACCOUNT)),
                    redis.key(&known_key(email, network)),
                ];
                let args = [
                    now,
                    window_ms,
                    max,
                    ceiling.threshold,
                    BACKOFF_BASE_MS,
                    ceiling.cap_ms,
                ];
                let reply: Vec<i64> = reserve
                    .evalsha_with_reload(
                        redis.client(),
                        keys,
                        args.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    )
                    .await
                    .map_err(|e| failed(redis, &e))?;
                match reply[..] {
                    [-1, until] => return Ok(Attempt::Refused { until_ms: until }),
                    [n, _, counted] => (n, counted == 1),
                    _ => return Err(format!("unexpected reply {reply:?}")),
                }
            }
            Guards::Database(store) => {
                match Self::reserve_in_database(store, email, network, max, now, window_ms, ceiling)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Ok(taken) => taken,
                    Err(refused) => return Ok(refused),
                }
            }
        };
        if n > max {
            // Over budget before the lockout was written (parallel attempts): refuse unchecked.
            return Ok(Attempt::Refused {
                until_ms: now + window_ms,
            });
        }
        Ok(Attempt::Allowed(n, counted))
    }

    /// The database's reservation: the network's slot (one upsert), then, unless the network
    /// is known, the account's (one upsert, and one conditional update that exactly one
    /// concurrent attempt wins per back-off gap).
    async fn reserve_in_database(
        store: &Store,
        email: &str,
        network: &str,
        max: i64,
        now: i64,
        window_ms: i64,
        ceiling: &Ceiling,
    ) -> Result<Result<(i64, bool), Attempt>, sea_orm::DbErr> {
        if let Some(until) = store.locked_until(email, network).await? {
            if until > now {
                return Ok(Err(Attempt::Refused { until_ms: until }));
            }
        }
        let (n, locked_until) = store
            .reserve_attempt(email, network, now, window_ms)
            .await?;
        if let Some(until) = locked_until.filter(|until| *until > now) {
            return Ok(Err(Attempt::Refused { until_ms: until }));
        }
        if n > max
            || store
                .is_known(email, &known_row(network), now - KNOWN_NETWORK_MS)
                .await?
        {
            return Ok(Ok((n, false)));
        }
        let (attempts, next) = store
            .reserve_account(email, ACCOUNT, now, window_ms)
            .await?;
        if attempts <= ceiling.threshold {
            return Ok(Ok((n, true)));
        }
        let refused = match next.filter(|next| *next > now) {
            Some(next) => Some(next),
            None => {
                let until = now + ceiling.delay_ms(attempts);
                (!store.take_account_slot(email, ACCOUNT, now, until).await?).then_some(until)
            }
        };
        match refused {
            None => Ok(Ok((n, true))),
            Some(until) => {
                // Not checked, so it costs neither budget.
                store.release_attempt(email, ACCOUNT).await?;
                store.release_attempt(email, network).await?;
                Ok(Err(Attempt::Refused { until_ms: until }))
            }
        }
    }

    /// Gives back a reserved attempt that could not be checked (the account store or the
    /// hash pool failed): only a verified wrong password may count against the owner.
    /// `account`: the reservation also took one from the account's count (give that back too,
    /// never one it did not take).
    pub async fn release(&self, email: &str, network: &str, account: bool) -> Result<(), String> {
        self.reachable()?;
        match self {
            Guards::Redis { redis, release, .. } => release
                .evalsha_with_reload::<i64, _, _>(
                    redis.client(),
                    std::iter::once(redis.key(&attempt_key(email, network)))
                        .chain(account.then(|| redis.key(&attempt_key(email, ACCOUNT))))
                        .collect::<Vec<_>>(),
                    Vec::<String>::new(),
                )
                .await
                .map(|_| ())
                .map_err(|e| failed(redis, &e)),
            Guards::Database(store) => async {
                store.release_attempt(email, network).await?;
                if account {
                    store.release_attempt(email, ACCOUNT).await?;
                }
                Ok(())
            }
            .await
            .map_err(|e: sea_orm::DbErr| e.to_string()),
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

    /// A successful login: forgets the network's and the account's attempts, and remembers
    /// the network as the owner's.
    pub async fn succeeded(&self, email: &str, network: &str, now: i64) -> Result<(), String> {
        self.reachable()?;
        match self {
            Guards::Redis {
                redis, succeeded, ..
            } => succeeded
                .evalsha_with_reload::<i64, _, _>(
                    redis.client(),
                    vec![
                        redis.key(&attempt_key(email, network)),
                        redis.key(&attempt_key(email, ACCOUNT)),
                        redis.key(&lockout_key(email, ACCOUNT)),
                        redis.key(&known_key(email, network)),
                    ],
                    vec![KNOWN_NETWORK_MS.to_string()],
                )
                .await
                .map(|_| ())
                .map_err(|e| failed(redis, &e)),
            Guards::Database(store) => async {
                store.clear_attempts(email, Some(network)).await?;
                store.clear_attempts(email, Some(ACCOUNT)).await?;
                store.mark_known(email, &known_row(network), now).await
            }
            .await
            .map_err(|e: sea_orm::DbErr| e.to_string()),
        }
    }

    /// Removes lockouts and attempts of `email` (one network and the account's back-off, or
    /// all); returns entries removed. Known networks stay known.
    pub async fn unlock(&self, email: &str, network: Option<&str>) -> Result<u32, String> {
        self.reachable()?;
        let removed = match self {
            Guards::Redis { redis, .. } => match network {
                Some(network) => redis
                    .client()
                    .del::<u64, _>(vec![
                        redis.key(&lockout_key(email, network)),
                        redis.key(&attempt_key(email, network)),
                        redis.key(&lockout_key(email, ACCOUNT)),
                        redis.key(&attempt_key(email, ACCOUNT)),
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
            Guards::Database(store) => match network {
                Some(network) => async {
                    Ok::<_, sea_orm::DbErr>(
                        store.clear_attempts(email, Some(network)).await?
                            + store.clear_attempts(email, Some(ACCOUNT)).await?,
                    )
                }
                .await
                .map_err(|e| e.to_string())?,
                None => store
                    .clear_attempts(email, None)
                    .await
                    .map_err(|e| e.to_string())?,
            },
        };
        Ok(u32::try_from(removed).unwrap_or(u32::MAX))
    }

    /// Lockouts in force at `now`, of `email` or of every email, the latest to end first, at
    /// most `limit`; the flag is true when more matched. In Redis the `lockout:` keys are
    /// scanned (at most [`MAX_SCANNED_LOCKOUTS`]), never listed with KEYS.
    pub async fn lockouts(
        &self,
        email: Option<&str>,
        now: i64,
        limit: usize,
    ) -> Result<(Vec<Lockout>, bool), String> {
        self.reachable()?;
        let mut lockouts = match self {
            Guards::Redis { redis, .. } => {
                let prefix = match email {
                    Some(email) => format!("lockout:{email}:"),
                    None => "lockout:".to_owned(),
                };
                let (keys, more) = redis
                    .scan_prefix(&prefix, MAX_SCANNED_LOCKOUTS)
                    .await
                    .map_err(|e| failed(redis, &e))?;
                let values = redis.get_many(&keys).await.map_err(|e| failed(redis, &e))?;
                let mut found: Vec<Lockout> = keys
                    .iter()
                    .zip(values)
                    .filter_map(|(key, value)| {
                        let (email, network) = parse_lockout_key(key)?;
                        Some(Lockout {
                            email: email.to_owned(),
                            network: network.to_owned(),
                            until_ms: value?.parse().ok()?,
                        })
                    })
                    .filter(|lockout| lockout.until_ms > now)
                    .collect();
                found.sort_by(|a, b| {
                    b.until_ms
                        .cmp(&a.until_ms)
                        .then_with(|| (&a.email, &a.network).cmp(&(&b.email, &b.network)))
                });
                let truncated = more || found.len() > limit;
                found.truncate(limit);
                return Ok((found, truncated));
            }
            Guards::Database(store) => store
                .lockouts(email, now, limit as u64 + 1)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|(email, network, until_ms)| Lockout {
                    email,
                    network,
                    until_ms,
                })
                .collect::<Vec<_>>(),
        };
        let truncated = lockouts.len() > limit;
        lockouts.truncate(limit);
        Ok((lockouts, truncated))
    }

    /// Counts one event of `name` (a counter key, e.g. `password_reset:{email}`) in a fixed
    /// window of `window_ms`; returns the count so far and the milliseconds left in the window.
    pub async fn hit(&self, name: &str, now: i64, window_ms: i64) -> Result<(i64, i64), String> {
        self.reachable()?;
        match self {
            Guards::Redis { redis, hit, .. } => {
                let reply: Vec<i64> = hit
                    .evalsha_with_reload(
                        redis.client(),
                        vec![redis.key(name)],
                        vec![window_ms.to_string()],
                    )
                    .await
                    .map_err(|e| failed(redis, &e))?;
                match reply[..] {
                    [n, left] => Ok((n, left)),
                    _ => Err(format!("unexpected reply {reply:?}")),
                }
            }
            Guards::Database(store) => {
                let (n, started) = store
                    .hit(name, now, window_ms)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((n, (started + window_ms - now).max(0)))
            }
        }
    }

    /// Forgets everything kept under `email` (attempts, lockouts, known networks) and the
    /// named counters: the account is being deleted.
    pub async fn forget(&self, email: &str, counters: &[String]) -> Result<(), String> {
        self.reachable()?;
        match self {
            Guards::Redis { redis, .. } => {
                for prefix in [
                    format!("lockout:{email}:"),
                    format!("login_attempt:{email}:"),
                    format!("login_known:{email}:"),
                ] {
                    redis
                        .unlink_prefix(&prefix)
                        .await
                        .map_err(|e| failed(redis, &e))?;
                }
                let keys: Vec<String> = counters.iter().map(|name| redis.key(name)).collect();
                if !keys.is_empty() {
                    redis
                        .client()
                        .del::<u64, _>(keys)
                        .await
                        .map_err(|e| failed(redis, &e))?;
                }
                Ok(())
            }
            // The database's rows go with the account, in its transaction.
            Guards::Database(_) => Ok(()),
        }
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

/// `lockout:{email}:{network}` → (email, network). The network starts at the first `:` after
/// the email's `@` (a domain has none; an IPv6 network has several).
fn parse_lockout_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix("lockout:")?;
    let at = rest.rfind('@')?;
    let split = at + rest[at..].find(':')?;
    Some((&rest[..split], &rest[split + 1..]))
}

fn attempt_key(email: &str, ip: &str) -> String {
    format!("login_attempt:{email}:{ip}")
}

fn lockout_key(email: &str, ip: &str) -> String {
    format!("lockout:{email}:{ip}")
}

fn known_key(email: &str, network: &str) -> String {
    format!("login_known:{email}:{network}")
}

/// The `lockouts` row marking a known network (`+` never starts an address).
fn known_row(network: &str) -> String {
    format!("+{network}")
}

fn denylist_key(jti: &str) -> String {
    format!("token:blacklist:{jti}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The database store on a fresh SQLite file, and the Redis store when `TEST_REDIS_URL`
    /// is set (CI sets it): every scenario runs on each.
    async fn stores() -> Vec<(&'static str, Guards)> {
        let path = std::env::temp_dir().join(format!(
            "portico-lockout-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        let db = portico_migrations::connect(
            &format!("sqlite://{}?mode=rwc", path.display()),
            Some(portico_migrations::Owner::Auth),
            Duration::from_secs(3),
        )
        .await
        .expect("database");
        let mut stores = vec![(
            "database",
            Guards::Database(Store::new(portico_migrations::Db::new(db))),
        )];
        if let Some(url) = std::env::var("TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty())
        {
            let redis = Redis::connect(
                &url,
                &format!("test:{}:", uuid::Uuid::new_v4().simple()),
                Duration::from_secs(1),
                None,
                tokio_util::sync::CancellationToken::new(),
            )
            .expect("redis");
            stores.push(("redis", Guards::redis(redis)));
        }
        stores
    }

    const MAX: i64 = 5;
    const WINDOW: i64 = 15 * 60 * 1000;
    const CEILING: Ceiling = Ceiling {
        threshold: 3,
        cap_ms: 60_000,
    };

    #[tokio::test]
    async fn a_release_gives_back_only_what_its_reservation_took_on_both_stores() {
        for (name, guards) in stores().await {
            let email = "owner@example.com";
            let now = 1_800_000_000_000;
            guards
                .succeeded(email, "192.0.2.10", now)
                .await
                .expect("the owner's network");
            // Past the threshold from elsewhere: the account's count is at CEILING.threshold + 1.
            let mut strangers = 0;
            for n in 0..CEILING.threshold {
                let network = format!("198.51.100.{n}");
                if matches!(
                    guards
                        .reserve(email, &network, MAX, now, WINDOW, &CEILING)
                        .await,
                    Ok(Attempt::Allowed(_, true))
                ) {
                    strangers += 1;
                }
            }
            assert_eq!(
                strangers, CEILING.threshold,
                "{name}: each took the account's count"
            );
            // The owner's attempt does not take from the account's count, so giving it back
            // must not lower it either.
            let owner = guards
                .reserve(email, "192.0.2.10", MAX, now, WINDOW, &CEILING)
                .await
                .expect("reserve");
            assert_eq!(owner, Attempt::Allowed(1, false), "{name}");
            guards
                .release(email, "192.0.2.10", false)
                .await
                .expect("release");
            // The next stranger is the first past the threshold: checked once, then spaced.
            assert!(
                matches!(
                    guards
                        .reserve(email, "198.51.100.200", MAX, now, WINDOW, &CEILING)
                        .await,
                    Ok(Attempt::Allowed(_, true))
                ),
                "{name}"
            );
            assert!(
                matches!(
                    guards
                        .reserve(email, "198.51.100.201", MAX, now, WINDOW, &CEILING)
                        .await,
                    Ok(Attempt::Refused { .. })
                ),
                "{name}: the account's count was not lowered by the owner's release"
            );
        }
    }

    #[tokio::test]
    async fn guesses_spread_over_networks_meet_the_account_ceiling_on_both_stores() {
        for (name, guards) in stores().await {
            let email = "victim@example.com";
            let mut now = 1_800_000_000_000;
            guards
                .succeeded(email, "192.0.2.10", now)
                .await
                .expect("the owner's network");
            let mut allowed = 0;
            let mut refused = Vec::new();
            for n in 0..30 {
                let network = format!("198.51.100.{}", n % 6 + 1);
                match guards
                    .reserve(email, &network, MAX, now, WINDOW, &CEILING)
                    .await
                    .expect("reserve")
                {
                    Attempt::Allowed(..) => allowed += 1,
                    Attempt::Refused { until_ms } => refused.push(until_ms),
                }
            }
            assert_eq!(allowed, 4, "{name}: the threshold, then one per gap");
            assert!(refused.iter().all(|until| *until == now + 1000), "{name}");
            assert!(
                matches!(
                    guards
                        .reserve(email, "192.0.2.10", MAX, now, WINDOW, &CEILING)
                        .await,
                    Ok(Attempt::Allowed(..))
                ),
                "{name}: the owner's network is exempt"
            );
            guards
                .succeeded(email, "192.0.2.10", now)
                .await
                .expect("owner in");
            for n in 0..12 {
                now += 60_000;
                let network = format!("198.51.100.{}", 100 + n);
                assert!(
                    matches!(
                        guards
                            .reserve(email, &network, MAX, now, WINDOW, &CEILING)
                            .await,
                        Ok(Attempt::Allowed(..))
                    ),
                    "{name}: guess {n} after its gap"
                );
            }
            assert_eq!(
                guards
                    .reserve(email, "198.51.100.250", MAX, now, WINDOW, &CEILING)
                    .await
                    .expect("reserve"),
                Attempt::Refused {
                    until_ms: now + 60_000
                },
                "{name}: the gap is capped"
            );
        }
    }

    #[tokio::test]
    async fn concurrent_attempts_take_each_back_off_slot_once_on_both_stores() {
        for (name, guards) in stores().await {
            let email = "racer@example.com";
            let now = 1_800_000_000_000;
            for n in 0..3 {
                let network = format!("198.51.100.{n}");
                guards
                    .reserve(email, &network, MAX, now, WINDOW, &CEILING)
                    .await
                    .expect("under the threshold");
            }
            let racers = (0..16).map(|n| {
                let guards = guards.clone();
                async move {
                    let network = format!("203.0.113.{n}");
                    guards
                        .reserve(email, &network, MAX, now, WINDOW, &CEILING)
                        .await
                        .expect("reserve")
                }
            });
            let outcomes = futures_util::future::join_all(racers).await;
            let allowed = outcomes
                .iter()
                .filter(|o| matches!(o, Attempt::Allowed(..)))
                .count();
            assert_eq!(allowed, 1, "{name}: one slot, one winner: {outcomes:?}");
        }
    }

    #[test]
    fn lockout_keys_split_at_the_domain_even_for_ipv6_networks() {
        assert_eq!(
            parse_lockout_key("lockout:a@example.com:203.0.113.7"),
            Some(("a@example.com", "203.0.113.7"))
        );
        assert_eq!(
            parse_lockout_key("lockout:a:b@example.com:2001:db8:1:2::/64"),
            Some(("a:b@example.com", "2001:db8:1:2::/64"))
        );
        assert_eq!(
            parse_lockout_key("lockout:a@example.com:*"),
            Some(("a@example.com", "*"))
        );
        assert_eq!(parse_lockout_key("lockout:no-at-sign:1.2.3.4"), None);
        assert_eq!(
            parse_lockout_key("login_attempt:a@example.com:1.2.3.4"),
            None
        );
    }

    #[tokio::test]
    async fn lockouts_in_force_are_listed_with_their_end_on_both_stores() {
        for (name, guards) in stores().await {
            let now = 1_800_000_000_000;
            guards
                .lock("a@example.com", "203.0.113.7", now, now + 60_000)
                .await
                .expect("lock");
            guards
                .lock("a@example.com", "2001:db8:1:2::/64", now, now + 120_000)
                .await
                .expect("lock");
            guards
                .lock("b@example.com", "198.51.100.1", now, now + 30_000)
                .await
                .expect("lock");
            guards
                .lock("c@example.com", "198.51.100.2", now - 10_000, now - 1)
                .await
                .expect("an ended lockout");

            let (all, truncated) = guards.lockouts(None, now, 100).await.expect("list");
            let seen: Vec<(&str, &str, i64)> = all
                .iter()
                .map(|l| (l.email.as_str(), l.network.as_str(), l.until_ms - now))
                .collect();
            assert_eq!(
                seen,
                [
                    ("a@example.com", "2001:db8:1:2::/64", 120_000),
                    ("a@example.com", "203.0.113.7", 60_000),
                    ("b@example.com", "198.51.100.1", 30_000),
                ],
                "{name}: the latest to end first, ended ones left out"
            );
            assert!(!truncated, "{name}");
            let (one, truncated) = guards
                .lockouts(Some("b@example.com"), now, 100)
                .await
                .expect("list");
            assert_eq!(one.len(), 1, "{name}");
            assert!(!truncated, "{name}");
            let (first, truncated) = guards.lockouts(None, now, 1).await.expect("list");
            assert_eq!(first.len(), 1, "{name}");
            assert!(truncated, "{name}: more than the limit");
        }
    }

    #[test]
    fn the_back_off_doubles_from_one_second_up_to_its_cap() {
        let ceiling = Ceiling {
            threshold: 3,
            cap_ms: 10_000,
        };
        let gaps: Vec<i64> = (4..=9).map(|n| ceiling.delay_ms(n)).collect();
        assert_eq!(gaps, [1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(ceiling.delay_ms(1_000_000), 10_000, "no overflow");
    }
}
