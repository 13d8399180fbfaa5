//! Token budgets of API keys: a request reserves its worst case before it goes upstream and
//! settles to the provider's real usage when it ends (a failed one gives everything back). A
//! reservation is admitted while the window's total — settled usage plus reservations in
//! flight — is below the budget, in one atomic step (a Lua script on Redis, shared by every
//! replica; a mutex-guarded map in memory), so concurrent requests never overspend it by more
//! than one reservation. Windows are fixed and aligned to the Unix epoch (a 1-day window is a
//! UTC day); a window's counter is `{REDIS_KEY_PREFIX}budget:{key id}:{window start}`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use portico_redis::{
    fred::{self, types::scripts::Script},
    Redis,
};

/// Takes `ARGV[2]` tokens when the counter is below `ARGV[1]`; the key lives `ARGV[3]` seconds.
/// Returns `{admitted, total}`.
const RESERVE: &str = r#"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then
  return {0, used}
end
local total = redis.call('INCRBY', KEYS[1], ARGV[2])
if redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return {1, total}
"#;

/// Adds `ARGV[1]` (negative: gives back) to a live counter, never below zero; a counter whose
/// window has gone is left alone.
const SETTLE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
if total < 0 then
  redis.call('SET', KEYS[1], 0, 'KEEPTTL')
  return 0
end
return total
"#;

/// Counters outlive their window by this much, so a settlement that ends after the window
/// still lands.
const GRACE_SECONDS: u64 = 3600;
/// Most windows the in-memory store keeps.
const MEMORY_MAX_COUNTERS: usize = 100_000;

/// One request's hold on a budget.
#[derive(Debug, Clone)]
pub struct Reservation {
    counter: String,
    /// Tokens held.
    pub amount: u64,
    /// Whether it was taken in memory because Redis was unreachable.
    in_memory: bool,
}

/// A refusal: the window is spent.
#[derive(Debug, Clone, Copy)]
pub struct Exceeded {
    /// Seconds until the window ends.
    pub retry_after: u64,
}

/// The window containing `now` (Unix seconds): its start and its end.
pub fn window(now: u64, window_seconds: u64) -> (u64, u64) {
    let window_seconds = window_seconds.max(1);
    let start = now - now % window_seconds;
    (start, start + window_seconds)
}

fn counter(key_id: &str, start: u64) -> String {
    format!("budget:{key_id}:{start}")
}

/// Counters in this process.
#[derive(Debug, Clone, Default)]
struct Memory {
    /// Counter → (tokens, Unix second after which it may be dropped).
    counters: Arc<Mutex<HashMap<String, (u64, u64)>>>,
}

impl Memory {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, u64)>> {
        self.counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reserve(&self, counter: &str, limit: u64, amount: u64, expires: u64, now: u64) -> bool {
        let mut counters = self.lock();
        if counters.len() >= MEMORY_MAX_COUNTERS && !counters.contains_key(counter) {
            counters.retain(|_, (_, until)| *until > now);
        }
        let entry = counters.entry(counter.to_owned()).or_insert((0, expires));
        if entry.0 >= limit {
            return false;
        }
        entry.0 += amount;
        true
    }

    fn settle(&self, counter: &str, delta: i64) {
        if let Some(entry) = self.lock().get_mut(counter) {
            entry.0 = entry.0.saturating_add_signed(delta);
        }
    }

    fn used(&self, counter: &str) -> u64 {
        self.lock().get(counter).map_or(0, |(used, _)| *used)
    }
}

/// Where budgets are counted: Redis (every replica), else this process.
#[derive(Clone)]
pub struct Budgets {
    redis: Option<Redis>,
    reserve: Script,
    settle: Script,
    memory: Memory,
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets")
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

impl Budgets {
    /// Budgets in `redis`, or in memory without it. When Redis is unreachable this replica's
    /// memory decides (as the rate limiter's `open` fail mode): a ceiling per replica.
    pub fn new(redis: Option<Redis>) -> Self {
        Self {
            redis,
            reserve: Script::from_lua(RESERVE),
            settle: Script::from_lua(SETTLE),
            memory: Memory::default(),
        }
    }

    /// Reserves `amount` tokens of `key_id`'s budget of `limit` per `window_seconds`.
    pub async fn reserve(
        &self,
        key_id: &str,
        limit: u64,
        window_seconds: u64,
        amount: u64,
        now: u64,
    ) -> Result<Reservation, Exceeded> {
        let (start, end) = window(now, window_seconds);
        let counter = counter(key_id, start);
        let exceeded = Exceeded {
            retry_after: end.saturating_sub(now).max(1),
        };
        let lifetime = end - now + GRACE_SECONDS;
        if let Some(redis) = self.redis.as_ref().filter(|r| r.is_up()) {
            let reply: Result<Vec<i64>, _> = self
                .reserve
                .evalsha_with_reload(
                    redis.client(),
                    vec![redis.key(&counter)],
                    vec![limit.to_string(), amount.to_string(), lifetime.to_string()],
                )
                .await;
            match reply.as_deref() {
                Ok([1, _]) => {
                    return Ok(Reservation {
                        counter,
                        amount,
                        in_memory: false,
                    })
                }
                Ok(_) => return Err(exceeded),
                Err(error) => {
                    redis.mark_down(error);
                    tracing::warn!(%error, "token budget decided in memory: Redis is unreachable");
                }
            }
        }
        if self
            .memory
            .reserve(&counter, limit, amount, now + lifetime, now)
        {
            Ok(Reservation {
                counter,
                amount,
                in_memory: true,
            })
        } else {
            Err(exceeded)
        }
    }

    /// Settles `reservation` to `actual` tokens (0 gives it all back).
    pub async fn settle(&self, reservation: &Reservation, actual: u64) {
        let delta = i64::try_from(actual).unwrap_or(i64::MAX)
            - i64::try_from(reservation.amount).unwrap_or(i64::MAX);
        if delta == 0 {
            return;
        }
        match &self.redis {
            Some(redis) if !reservation.in_memory => {
                let reply: Result<i64, fred::error::Error> = self
                    .settle
                    .evalsha_with_reload(
                        redis.client(),
                        vec![redis.key(&reservation.counter)],
                        vec![delta.to_string()],
                    )
                    .await;
                if let Err(error) = reply {
                    redis.mark_down(&error);
                    tracing::warn!(%error, delta, "a token budget settlement was lost: Redis is unreachable");
                }
            }
            _ => self.memory.settle(&reservation.counter, delta),
        }
    }

    /// Tokens charged in the current window (reservations in flight included) and the window's
    /// end (Unix seconds).
    pub async fn used(&self, key_id: &str, window_seconds: u64, now: u64) -> (u64, u64) {
        let (start, end) = window(now, window_seconds);
        let counter = counter(key_id, start);
        if let Some(redis) = self.redis.as_ref().filter(|r| r.is_up()) {
            use fred::prelude::KeysInterface as _;
            match redis
                .client()
                .get::<Option<u64>, _>(redis.key(&counter))
                .await
            {
                Ok(used) => return (used.unwrap_or(0), end),
                Err(error) => redis.mark_down(&error),
            }
        }
        (self.memory.used(&counter), end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        assert_eq!(window(86_400 * 3 + 5, 86_400), (86_400 * 3, 86_400 * 4));
        assert_eq!(window(59, 60), (0, 60));
        assert_eq!(window(60, 60), (60, 120));
    }

    #[tokio::test]
    async fn reservations_are_admitted_below_the_budget_and_settle_to_real_usage() {
        let budgets = Budgets::new(None);
        let now = 1_000_000;
        let first = budgets
            .reserve("k", 100, 60, 80, now)
            .await
            .expect("0 < 100");
        let second = budgets
            .reserve("k", 100, 60, 80, now)
            .await
            .expect("80 < 100");
        assert!(
            budgets.reserve("k", 100, 60, 1, now).await.is_err(),
            "160 >= 100"
        );
        budgets.settle(&first, 10).await;
        budgets.settle(&second, 0).await;
        assert_eq!(budgets.used("k", 60, now).await.0, 10);
        let exceeded = budgets
            .reserve("k", 10, 60, 1, now)
            .await
            .expect_err("10 >= 10");
        let (_, end) = window(now, 60);
        assert_eq!(exceeded.retry_after, end - now);
        // The next window starts empty.
        assert!(budgets.reserve("k", 10, 60, 1, end).await.is_ok());
    }
}
