//! When the edge and the content service run in one process (`portico serve`, `cargo run`), the
//! edge may serve public content from its own cache, validated against the content service's
//! revision counter: every write bumps it *before* it returns, so once a write has returned no
//! cached copy filled under an older revision is served. The registry is keyed by the content
//! service's listen address, so an edge pointed at another address (another process, another
//! pod) finds nothing and keeps asking the service.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock, RwLock,
    },
};

/// A content service's write counter.
#[derive(Debug, Default)]
pub struct Revision(AtomicU64);

impl Revision {
    /// The current revision.
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Marks a write: call before the write is acknowledged.
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn registry() -> &'static RwLock<HashMap<SocketAddr, Arc<Revision>>> {
    static REGISTRY: OnceLock<RwLock<HashMap<SocketAddr, Arc<Revision>>>> = OnceLock::new();
    REGISTRY.get_or_init(RwLock::default)
}

/// Registers the content service listening on `addr` in this process.
pub fn register(addr: SocketAddr, revision: Arc<Revision>) {
    registry()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(addr, revision);
}

/// Removes the content service on `addr` (it stopped).
pub fn unregister(addr: SocketAddr) {
    registry()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .remove(&addr);
}

/// The revision of the content service on `addr`, when it runs in this process.
pub fn lookup(addr: SocketAddr) -> Option<Arc<Revision>> {
    registry()
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&addr)
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_registered_address_has_a_revision() {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert!(lookup(addr).is_none());
        let revision = Arc::new(Revision::default());
        register(addr, Arc::clone(&revision));
        revision.bump();
        assert_eq!(lookup(addr).map(|r| r.current()), Some(1));
        unregister(addr);
        assert!(lookup(addr).is_none());
    }
}
