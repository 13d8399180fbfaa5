//! Read-through cache for public reads: an in-process L1 (short TTL) over Redis
//! (`content:{slug}`, `content:list:{hash}`).
//!
//! Freshness does not hang on pub/sub timing. Every write sets `content:rev` to a new random
//! value *before* it returns, and every cached value carries the rev it was filled at; a value
//! whose rev is not current is a miss. (Random, not a counter: after an operator deletes
//! `content:*`, a counter could come back to an old value and revive a stale entry.) So once a write has returned, no replica serves what it replaced. This
//! also covers the classic race of a reader that filled the cache with a row it read just before
//! the write. The `content:invalidate` channel still tells every replica to drop its L1 at once,
//! which frees memory and spares the rev comparison a lookup. Without Redis, L1 alone (one replica).
//! With Redis down, reads go to the database (the cache reports degraded) and writes are
//! refused (UNAVAILABLE, nothing written): a write must bump `content:rev` before it commits,
//! or a Redis that comes back with its data would make what it replaced look current.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use portico_redis::{fred::prelude::*, Redis};
use portico_revision::Revision;
use portico_ttlmap::TtlMap;

/// How long an L1 entry may live (it is also checked against `content:rev` on every use).
const L1_TTL: Duration = Duration::from_secs(5);
/// Most L1 entries.
const L1_CAPACITY: usize = 10_000;
/// Lifetime of a Redis entry (stale entries are recognised by their rev before this).
const REDIS_TTL_SECONDS: i64 = 60;

/// Counts one lookup in `cache_requests_total{layer,result}`: each layer asked counts its
/// own hit or miss (an L1 miss answered by Redis is an `l1` miss and a `redis` hit).
fn count(layer: &'static str, hit: bool) {
    portico_telemetry::metrics::cache_lookup(layer, hit);
}

/// The revision cached values are checked against; all zeros when `content:rev` is unset.
type Rev = [u8; 16];

#[derive(Clone)]
struct Entry {
    rev: Rev,
    bytes: Bytes,
}

/// The content cache.
#[derive(Clone)]
pub struct Cache {
    l1: TtlMap<Entry>,
    redis: Option<Redis>,
    /// This replica's write counter: without Redis it tags L1 entries (a fill that raced a
    /// write is never served), and an edge in the same process validates its copies with it.
    revision: Arc<Revision>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

impl Cache {
    /// A cache over `redis` (L1 only when `None`).
    pub fn new(redis: Option<Redis>) -> Self {
        Self {
            l1: TtlMap::new(L1_TTL, L1_CAPACITY),
            redis,
            revision: Arc::default(),
        }
    }

    /// The write counter (registered for the edge when there is no Redis).
    pub fn revision(&self) -> Arc<Revision> {
        Arc::clone(&self.revision)
    }

    /// The local revision as an L1 tag.
    fn local_rev(&self) -> Rev {
        let mut rev = Rev::default();
        rev[..8].copy_from_slice(&self.revision.current().to_be_bytes());
        rev
    }

    /// Drops every L1 entry (another replica wrote).
    pub fn drop_local(&self) {
        self.l1.clear();
    }

    /// The cached bytes under `key`, or `load`'s, cached.
    pub async fn get_or_load<F, Fut, E>(&self, key: &str, load: F) -> Result<Bytes, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Bytes, E>>,
    {
        let Some(redis) = self.redis.as_ref().filter(|r| r.is_up()) else {
            if self.redis.is_some() {
                // Redis is down: no shared rev to trust, so no cache at all (degraded).
                count("redis", false);
                return load().await;
            }
            // Read before loading: a write that lands meanwhile makes this fill stale-tagged.
            let rev = self.local_rev();
            if let Some(entry) = self.l1.get(key).filter(|e| e.rev == rev) {
                count("l1", true);
                return Ok(entry.bytes);
            }
            let bytes = load().await?;
            self.l1.insert(
                key.to_owned(),
                Entry {
                    rev,
                    bytes: bytes.clone(),
                },
            );
            count("l1", false);
            return Ok(bytes);
        };
        let rev: Rev = match redis
            .client()
            .get::<Option<Vec<u8>>, _>(redis.key("content:rev"))
            .await
        {
            Ok(rev) => rev.and_then(|raw| raw.try_into().ok()).unwrap_or_default(),
            Err(error) => {
                redis.mark_down(&error);
                count("redis", false);
                return load().await;
            }
        };
        if let Some(entry) = self.l1.get(key).filter(|e| e.rev == rev) {
            count("l1", true);
            return Ok(entry.bytes);
        }
        count("l1", false);
        let full_key = redis.key(key);
        if let Ok(Some(raw)) = redis.client().get::<Option<Vec<u8>>, _>(&full_key).await {
            if raw.len() >= rev.len() && raw[..rev.len()] == rev {
                let bytes = Bytes::copy_from_slice(&raw[rev.len()..]);
                self.l1.insert(
                    key.to_owned(),
                    Entry {
                        rev,
                        bytes: bytes.clone(),
                    },
                );
                count("redis", true);
                return Ok(bytes);
            }
        }
        let bytes = load().await?;
        let mut stored = rev.to_vec();
        stored.extend_from_slice(&bytes);
        let set: Result<(), _> = redis
            .client()
            .set(
                &full_key,
                stored,
                Some(Expiration::EX(REDIS_TTL_SECONDS)),
                None,
                false,
            )
            .await;
        if let Err(error) = set {
            tracing::debug!(%error, "content cache fill failed");
        }
        self.l1.insert(
            key.to_owned(),
            Entry {
                rev,
                bytes: bytes.clone(),
            },
        );
        count("redis", false);
        Ok(bytes)
    }

    /// Before a write: a new `content:rev`, or the write must not happen. A write whose
    /// invalidation cannot be recorded in Redis would leave every replica's copies (and, once
    /// a Redis that kept its data is back, the Redis entries) looking current: so while Redis
    /// is configured but unreachable, writes fail with UNAVAILABLE and nothing is written.
    pub async fn begin_write(&self) -> Result<(), WriteRefused> {
        let Some(redis) = &self.redis else {
            return Ok(());
        };
        if !redis.is_up() {
            return Err(WriteRefused);
        }
        match set_new_rev(redis).await {
            Ok(()) => Ok(()),
            Err(error) => {
                tracing::error!(%error, "content write refused: content:rev could not be bumped");
                redis.mark_down(&error);
                Err(WriteRefused)
            }
        }
    }

    /// After a write of `slug`: a new rev again (a reader that filled between
    /// [`Cache::begin_write`] and the commit tagged the old row with the first one), delete
    /// the Redis keys, tell every replica to drop its L1. If Redis fails here, the bump is
    /// retried in the background until it lands.
    pub async fn invalidate(&self, slug: &str) {
        self.revision.bump();
        self.l1.clear();
        let Some(redis) = &self.redis else { return };
        let outcome: Result<(), Error> = async {
            set_new_rev(redis).await?;
            let client = redis.client();
            client
                .del::<u64, _>(redis.key(&format!("content:{slug}")))
                .await?;
            redis.unlink_prefix("content:list:").await?;
            client
                .publish::<u64, _, _>(redis.key("content:invalidate"), slug)
                .await?;
            Ok(())
        }
        .await;
        if let Err(error) = outcome {
            tracing::error!(%error, slug, "content:rev bump after a write failed; retrying until it lands");
            redis.mark_down(&error);
            let redis = redis.clone();
            tokio::spawn(async move {
                let mut up = redis.subscribe();
                loop {
                    // Wait for the probe to see Redis back, then bump; the rev check does the
                    // rest (entries are dropped by their TTL).
                    if up.wait_for(|up| *up).await.is_err() {
                        return;
                    }
                    match set_new_rev(&redis).await {
                        Ok(()) => {
                            tracing::info!("owed content:rev bump done");
                            return;
                        }
                        Err(error) => redis.mark_down(&error),
                    }
                }
            });
        }
    }
}

/// A content write refused because `content:rev` cannot be bumped (Redis unreachable).
#[derive(Debug, Clone, Copy)]
pub struct WriteRefused;

/// Sets `content:rev` to a new random value: every cached value is stale everywhere.
async fn set_new_rev(redis: &Redis) -> Result<(), Error> {
    let rev = uuid::Uuid::new_v4().into_bytes().to_vec();
    redis
        .client()
        .set::<(), _, _>(redis.key("content:rev"), rev, None, None, false)
        .await
}

/// Follows `content:invalidate` and drops this replica's L1 on every message, reconnecting
/// after outages. Stops with `shutdown`.
pub fn subscribe(
    url: &str,
    tls_ca: Option<&std::path::Path>,
    prefix: &str,
    cache: Cache,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), Error> {
    let subscriber = Builder::from_config(portico_redis::config(url, tls_ca)?)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build_subscriber_client()?;
    let channel = format!("{prefix}content:invalidate");
    tokio::spawn(async move {
        let _connection = subscriber.connect();
        let _resubscribe = subscriber.manage_subscriptions();
        if let Err(error) = subscriber.subscribe(channel.clone()).await {
            tracing::warn!(%error, "content:invalidate subscription failed; L1 relies on the rev check");
        }
        let mut messages = subscriber.message_rx();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                message = messages.recv() => match message {
                    Ok(_) => cache.drop_local(),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => cache.drop_local(),
                    Err(_) => break,
                },
            }
        }
        let _ = subscriber.quit().await;
    });
    Ok(())
}
