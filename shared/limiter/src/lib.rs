//! Token buckets as GCRA (the generic cell rate algorithm): exact token-bucket admission with one
//! number of state per bucket — the *theoretical arrival time* (TAT) — instead of fixed windows.
//! This crate holds the decision math (shared with the Redis script, which does the same
//! arithmetic), an injectable clock, and the sharded in-memory store. It is used by the ratelimit
//! service and by the edge (as its ceiling when the ratelimit service is unreachable).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

mod memory;

pub use memory::MemoryStore;

/// The named policies (docs/CONTRACT.md §8), from `RATE_LIMIT_*` (README, Configuration).
#[derive(Debug, Clone)]
pub struct Policies {
    /// `global`: per client IP, every route.
    pub global: Limit,
    /// `auth`: login and register per IP.
    pub auth: Limit,
    /// `chat`: per user, or per IP for anonymous callers.
    pub chat: Limit,
}

impl Policies {
    /// The policies configured by `settings`.
    pub fn from_settings(settings: &portico_config::RateLimitSettings) -> Self {
        Self {
            global: Limit::per_window(settings.global_max, settings.global_window),
            auth: Limit::per_window(settings.auth_max, settings.global_window),
            chat: Limit {
                capacity: settings.chat_capacity,
                refill_per_second: settings.chat_refill_rate,
            },
        }
    }

    /// The policy called `name`.
    pub fn get(&self, name: &str) -> Option<Limit> {
        match name {
            "global" => Some(self.global),
            "auth" => Some(self.auth),
            "chat" => Some(self.chat),
            _ => None,
        }
    }
}

/// The network a client is limited and locked out by: an IPv4 address itself, an IPv6 address
/// by its /64 (`2001:db8:1:2::/64`), since one IPv6 subscriber is routinely given a whole /64
/// and could otherwise rotate through 2^64 addresses. IPv4-mapped IPv6 counts as IPv4.
pub fn client_network(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                format!("{}/64", std::net::Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

/// The storage key of bucket `key` under `policy` (before `REDIS_KEY_PREFIX`):
/// `ratelimit:{policy}:{key}`, so `redis-cli del ratelimit:global:<ip>` resets one caller.
pub fn bucket_key(policy: &str, key: &str) -> String {
    format!("ratelimit:{policy}:{key}")
}

/// A bucket's shape: `capacity` tokens, refilled continuously at `refill_per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Burst size: `q` of `RateLimit-Policy` (`RateLimit-Limit` in the legacy form).
    pub capacity: u32,
    /// Tokens added per second.
    pub refill_per_second: f64,
}

impl Limit {
    /// `capacity` tokens per `window`, refilled evenly (100 per 60 s = one every 600 ms).
    pub fn per_window(capacity: u32, window: Duration) -> Self {
        Self {
            capacity,
            refill_per_second: f64::from(capacity) / window.as_secs_f64().max(1e-9),
        }
    }

    /// Whole microseconds between two tokens (at least 1). Whole numbers keep every quantity
    /// of [`decide`] an exact integer in `f64` (exact up to 2^53 µs, the year 2255), so Rust
    /// and the Redis script agree to the microsecond.
    pub fn interval_micros(&self) -> f64 {
        (1_000_000.0 / self.refill_per_second).round().max(1.0)
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the tokens were taken.
    pub allowed: bool,
    /// The bucket's capacity.
    pub limit: u32,
    /// Whole tokens left after this decision.
    pub remaining: u32,
    /// Milliseconds until the bucket is full again.
    pub reset_after_ms: u64,
    /// Milliseconds until `cost` tokens are available (0 when allowed).
    pub retry_after_ms: u64,
}

impl Decision {
    /// An allowed decision that touched no bucket (whitelisted callers).
    pub fn unlimited(limit: u32) -> Self {
        Self {
            allowed: true,
            limit,
            remaining: limit,
            reset_after_ms: 0,
            retry_after_ms: 0,
        }
    }
}

/// One GCRA step. `tat` is the stored theoretical arrival time (whole µs since the epoch,
/// `None` for a fresh bucket), `now` the current time (whole µs). Returns the decision and, when allowed, the new
/// TAT to store (with a lifetime of `reset_after_ms`).
///
/// The Redis script (`services/ratelimit/src/gcra.lua`) performs exactly this arithmetic.
pub fn decide(tat: Option<f64>, now: f64, limit: Limit, cost: u32) -> (Decision, Option<f64>) {
    let interval = limit.interval_micros();
    let burst_span = f64::from(limit.capacity) * interval;
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat + f64::from(cost) * interval;
    let allow_at = new_tat - burst_span;
    let whole = |span: f64| (span / interval).floor().max(0.0) as u32;
    let ms = |micros: f64| (micros.max(0.0) / 1000.0).ceil() as u64;
    if allow_at > now {
        let decision = Decision {
            allowed: false,
            limit: limit.capacity,
            remaining: whole(burst_span - (tat - now)),
            reset_after_ms: ms(tat - now),
            retry_after_ms: ms(allow_at - now),
        };
        (decision, None)
    } else {
        let decision = Decision {
            allowed: true,
            limit: limit.capacity,
            remaining: whole(burst_span - (new_tat - now)),
            reset_after_ms: ms(new_tat - now),
            retry_after_ms: 0,
        };
        (decision, Some(new_tat))
    }
}

/// A bucket's state at `now` without taking from it: `remaining` whole tokens, `reset_after_ms`
/// until full, `retry_after_ms` until one token is available. `tat` as in [`decide`]; nothing
/// is stored, so reading a bucket never changes a later decision.
pub fn peek(tat: Option<f64>, now: f64, limit: Limit) -> Decision {
    let (state, _) = decide(tat, now, limit, 0);
    Decision {
        retry_after_ms: decide(tat, now, limit, 1).0.retry_after_ms,
        ..state
    }
}

/// Time source of the limiter, injectable so tests can move time without sleeping.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Microseconds since the Unix epoch.
    fn now_micros(&self) -> u64;

    /// True for the real clock: the Redis backend then uses the server's `TIME` instead.
    fn is_system(&self) -> bool {
        false
    }
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64
    }

    fn is_system(&self) -> bool {
        true
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock {
    micros: AtomicU64,
}

impl ManualClock {
    /// A clock at `start_micros`.
    pub fn new(start_micros: u64) -> Arc<Self> {
        Arc::new(Self {
            micros: AtomicU64::new(start_micros),
        })
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.micros
            .fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> u64 {
        self.micros.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_grouped_by_their_64() {
        let network = |ip: &str| client_network(ip.parse().expect("ip"));
        assert_eq!(network("203.0.113.7"), "203.0.113.7");
        assert_eq!(network("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(
            network("2001:db8:1:2:ffff:ffff:ffff:ffff"),
            "2001:db8:1:2::/64"
        );
        assert_ne!(network("2001:db8:1:3::1"), network("2001:db8:1:2::1"));
        assert_eq!(network("::ffff:198.51.100.7"), "198.51.100.7");
    }

    const NOW: f64 = 1_000_000_000_000.0;

    #[test]
    fn burst_then_exact_refill() {
        let limit = Limit::per_window(5, Duration::from_secs(5)); // one token per second
        let mut tat = None;
        for expected_remaining in (0..5).rev() {
            let (decision, new_tat) = decide(tat, NOW, limit, 1);
            assert!(decision.allowed);
            assert_eq!(decision.remaining, expected_remaining);
            tat = new_tat;
        }
        let (denied, none) = decide(tat, NOW, limit, 1);
        assert!(!denied.allowed && none.is_none());
        assert_eq!(denied.retry_after_ms, 1000);
        assert_eq!(denied.reset_after_ms, 5000);

        // 999 ms later: still nothing; at 1000 ms: exactly one token.
        assert!(!decide(tat, NOW + 999_000.0, limit, 1).0.allowed);
        let (one, tat_after) = decide(tat, NOW + 1_000_000.0, limit, 1);
        assert!(one.allowed);
        assert_eq!(one.remaining, 0);
        assert!(!decide(tat_after, NOW + 1_000_000.0, limit, 1).0.allowed);
    }

    #[test]
    fn cost_takes_several_tokens_and_is_refused_whole() {
        let limit = Limit {
            capacity: 10,
            refill_per_second: 1.0,
        };
        let (d, tat) = decide(None, NOW, limit, 7);
        assert!(d.allowed);
        assert_eq!(d.remaining, 3);
        let (d, unchanged) = decide(tat, NOW, limit, 4);
        assert!(!d.allowed && unchanged.is_none());
        assert_eq!(d.remaining, 3, "a refused request takes nothing");
        assert_eq!(d.retry_after_ms, 1000);
        assert!(decide(tat, NOW, limit, 3).0.allowed);
    }

    #[test]
    fn peeking_reads_the_bucket_and_changes_nothing() {
        let limit = Limit::per_window(5, Duration::from_secs(5)); // one token per second
        let fresh = peek(None, NOW, limit);
        assert_eq!(
            (fresh.remaining, fresh.reset_after_ms, fresh.retry_after_ms),
            (5, 0, 0)
        );
        let mut tat = None;
        for _ in 0..5 {
            tat = decide(tat, NOW, limit, 1).1;
        }
        let empty = peek(tat, NOW, limit);
        assert_eq!(
            (empty.remaining, empty.reset_after_ms, empty.retry_after_ms),
            (0, 5000, 1000)
        );
        assert_eq!(
            peek(tat, NOW, limit),
            empty,
            "a second look sees the same bucket"
        );
        let later = peek(tat, NOW + 2_500_000.0, limit);
        assert_eq!(
            (later.remaining, later.reset_after_ms, later.retry_after_ms),
            (2, 2500, 0)
        );
    }

    #[test]
    fn fractional_rates_count_whole_tokens() {
        let limit = Limit {
            capacity: 5,
            refill_per_second: 0.333,
        };
        let mut tat = None;
        let mut allowed = 0;
        for _ in 0..10 {
            let (d, t) = decide(tat, NOW, limit, 1);
            if d.allowed {
                allowed += 1;
                tat = t;
            }
        }
        assert_eq!(allowed, 5);
        let wait = decide(tat, NOW, limit, 1).0.retry_after_ms;
        assert_eq!(wait, 3004, "1 / 0.333 s, rounded up to the millisecond");
    }
}
