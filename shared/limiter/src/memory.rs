//! The in-memory bucket store: moka's sharded concurrent map, with an atomic read-modify-write
//! per key, each entry expiring when its bucket would be full again (an expired bucket and a
//! fresh one are the same thing), and a hard cap on keys so memory stays bounded under millions
//! of distinct callers.

use std::{sync::Arc, time::Duration};

use moka::{ops::compute::Op, sync::Cache, Expiry};

use crate::{decide, Clock, Decision, Limit};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tat: f64,
    full_in: Duration,
}

struct UntilFull;

impl Expiry<String, Bucket> for UntilFull {
    fn expire_after_create(
        &self,
        _: &String,
        bucket: &Bucket,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(bucket.full_in)
    }

    fn expire_after_update(
        &self,
        _: &String,
        bucket: &Bucket,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(bucket.full_in)
    }
}

/// Buckets in process memory (not shared between instances).
#[derive(Clone)]
pub struct MemoryStore {
    buckets: Cache<String, Bucket>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.buckets.entry_count())
            .finish()
    }
}

impl MemoryStore {
    /// A store holding at most `max_keys` buckets (the least recently used go first beyond it).
    pub fn new(max_keys: u64, clock: Arc<dyn Clock>) -> Self {
        Self {
            buckets: Cache::builder()
                .max_capacity(max_keys)
                .expire_after(UntilFull)
                .build(),
            clock,
        }
    }

    /// Takes `cost` tokens from bucket `key` if it has them.
    pub fn check(&self, key: &str, limit: Limit, cost: u32) -> Decision {
        let now = self.clock.now_micros() as f64;
        let mut decision = None;
        self.buckets.entry_by_ref(key).and_compute_with(|entry| {
            let (made, new_tat) = decide(entry.map(|e| e.into_value().tat), now, limit, cost);
            decision = Some(made);
            match new_tat {
                Some(tat) => Op::Put(Bucket {
                    tat,
                    full_in: Duration::from_millis(made.reset_after_ms.max(1)),
                }),
                None => Op::Nop,
            }
        });
        // The closure always runs; the fallback only satisfies the type.
        decision.unwrap_or_else(|| decide(None, now, limit, cost).0)
    }

    /// Bucket `key` as it is now, without taking a token (see [`crate::peek`]).
    pub fn peek(&self, key: &str, limit: Limit) -> Decision {
        let now = self.clock.now_micros() as f64;
        crate::peek(self.buckets.get(key).map(|bucket| bucket.tat), now, limit)
    }

    /// Forgets bucket `key`; returns how many were removed (0 or 1).
    pub fn reset_key(&self, key: &str) -> u64 {
        u64::from(self.buckets.remove(key).is_some())
    }

    /// Forgets every bucket whose key starts with `prefix`.
    pub fn reset_prefix(&self, prefix: &str) -> u64 {
        let doomed: Vec<Arc<String>> = self
            .buckets
            .iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .map(|(key, _)| key)
            .collect();
        doomed
            .iter()
            .filter(|key| self.buckets.remove(key.as_str()).is_some())
            .count() as u64
    }

    /// Buckets held now (after pending evictions).
    pub fn len(&self) -> u64 {
        self.buckets.run_pending_tasks();
        self.buckets.entry_count()
    }

    /// True when no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ManualClock;

    #[test]
    fn buckets_are_per_key_and_refill_with_the_clock() {
        let clock = ManualClock::new(1_000_000_000_000);
        let store = MemoryStore::new(1000, clock.clone());
        let limit = Limit::per_window(3, Duration::from_secs(3));
        let admitted = (0..10)
            .filter(|_| store.check("global:1.1.1.1", limit, 1).allowed)
            .count();
        assert_eq!(admitted, 3);
        assert!(
            store.check("global:2.2.2.2", limit, 1).allowed,
            "another key has its own bucket"
        );
        clock.advance(Duration::from_secs(2));
        let admitted = (0..10)
            .filter(|_| store.check("global:1.1.1.1", limit, 1).allowed)
            .count();
        assert_eq!(admitted, 2, "two seconds refill exactly two tokens");
    }

    #[test]
    fn concurrent_checks_never_over_admit() {
        let store = MemoryStore::new(1000, ManualClock::new(1_000_000_000_000));
        let limit = Limit::per_window(100, Duration::from_secs(3600));
        let admitted: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        (0..100)
                            .filter(|_| store.check("k", limit, 1).allowed)
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(admitted, 100);
    }

    #[test]
    fn reset_by_key_and_prefix() {
        let store = MemoryStore::new(1000, ManualClock::new(1_000_000_000_000));
        let limit = Limit::per_window(1, Duration::from_secs(3600));
        for key in ["global:a", "global:b", "auth:a"] {
            assert!(store.check(key, limit, 1).allowed);
            assert!(!store.check(key, limit, 1).allowed);
        }
        assert_eq!(store.reset_key("global:a"), 1);
        assert!(store.check("global:a", limit, 1).allowed);
        assert_eq!(store.reset_prefix("global:"), 2);
        assert!(store.check("global:b", limit, 1).allowed);
        assert!(
            !store.check("auth:a", limit, 1).allowed,
            "other prefixes untouched"
        );
    }

    #[test]
    fn memory_stays_bounded_under_many_distinct_keys() {
        let store = MemoryStore::new(10_000, ManualClock::new(1_000_000_000_000));
        let limit = Limit::per_window(10, Duration::from_secs(60));
        for i in 0..200_000u32 {
            store.check(&format!("global:{i}"), limit, 1);
        }
        assert!(store.len() <= 10_000, "{} buckets held", store.len());
    }
}
