//! A bounded map whose entries expire, for caches read on every request (the content L1, the
//! edge's rate-limit views). A hit is one read-locked lookup and a clone. moka did the same job
//! with per-read bookkeeping that, measured, cost more than the rest of a cached content read
//! and half a millisecond of the edge's p99 (README, Benchmarks).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::{Duration, Instant},
};

/// Entries live `ttl` after insertion; at `capacity` an insert first drops expired entries,
/// then, if still full, everything (a cache may forget).
#[derive(Debug, Clone)]
pub struct TtlMap<V> {
    entries: Arc<RwLock<HashMap<String, (V, Instant)>>>,
    ttl: Duration,
    capacity: usize,
}

impl<V: Clone> TtlMap<V> {
    /// An empty map.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: Arc::default(),
            ttl,
            capacity: capacity.max(1),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, (V, Instant)>> {
        self.entries
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, (V, Instant)>> {
        self.entries
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The live value under `key`.
    pub fn get(&self, key: &str) -> Option<V> {
        self.read()
            .get(key)
            .filter(|(_, inserted)| inserted.elapsed() < self.ttl)
            .map(|(value, _)| value.clone())
    }

    /// Stores `value` under `key` for `ttl`.
    pub fn insert(&self, key: String, value: V) {
        let mut entries = self.write();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            let ttl = self.ttl;
            entries.retain(|_, (_, inserted)| inserted.elapsed() < ttl);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, (value, Instant::now()));
    }

    /// Forgets `key`.
    pub fn remove(&self, key: &str) {
        self.write().remove(key);
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.write().clear();
    }

    /// Entries held, expired or not.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_capacity_is_a_bound() {
        let map = TtlMap::new(Duration::ZERO, 10);
        map.insert("a".into(), 1);
        assert_eq!(map.get("a"), None, "a zero TTL keeps nothing live");

        let map = TtlMap::new(Duration::from_secs(60), 2);
        map.insert("a".into(), 1);
        map.insert("b".into(), 2);
        map.insert("b".into(), 3);
        assert_eq!(
            (map.get("a"), map.get("b"), map.len()),
            (Some(1), Some(3), 2)
        );
        map.insert("c".into(), 4);
        assert!(map.len() <= 2);
        assert_eq!(map.get("c"), Some(4));
        map.remove("c");
        assert_eq!(map.get("c"), None);
        map.clear();
        assert!(map.is_empty());
    }
}
