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
//!
//! The same revision is what `WatchRevision` streams (content.proto): with Redis the current
//! `content:rev` (empty while Redis is unreachable or the key unset), without Redis a value
//! made of this process's random instance id and its write counter.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use portico_redis::{fred::prelude::*, Redis};
use portico_ttlmap::TtlMap;
use tokio::sync::watch;

/// How long an L1 entry may live (it is also checked against `content:rev` on every use).
const L1_TTL: Duration = Duration::from_secs(5);
/// Most L1 entries.
const L1_CAPACITY: usize = 10_000;
/// Lifetime of a Redis entry (stale entries are recognised by their rev before this).
const REDIS_TTL_SECONDS: i64 = 60;
/// How often, while someone watches the revision, `content:rev` is read again: a write on
/// another replica whose `content:invalidate` message was lost reaches the watchers within this.
const REVISION_POLL: Duration = Duration::from_secs(1);

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
    /// write is never served).
    writes: Arc<AtomicU64>,
    /// Random per process: without Redis the streamed revision is this and `writes`, so a
    /// restarted replica never repeats a revision an edge may still hold copies under.
    instance: [u8; 16],
    /// What `WatchRevision` streams.
    revision: Arc<watch::Sender<Bytes>>,
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
        let instance = uuid::Uuid::new_v4().into_bytes();
        // With Redis nothing is known until `content:rev` has been read.
        let first = if redis.is_some() {
            Bytes::new()
        } else {
            local_revision(&instance, 0)
        };
        Self {
            l1: TtlMap::new(L1_TTL, L1_CAPACITY),
            redis,
            writes: Arc::default(),
            instance,
            revision: Arc::new(watch::channel(first).0),
        }
    }

    /// The revision as `WatchRevision` streams it: the current value, then each new one.
    pub fn watch_revision(&self) -> watch::Receiver<Bytes> {
        self.revision.subscribe()
    }

    /// Publishes `revision` to the watchers when it differs from the last one.
    fn publish_revision(&self, revision: Bytes) {
        self.revision.send_if_modified(|current| {
            let changed = *current != revision;
            *current = revision;
            changed
        });
    }

    /// Reads `content:rev` again and publishes it (empty while Redis is down or it is unset).
    pub async fn refresh_revision(&self) {
        let Some(redis) = &self.redis else { return };
        if !redis.is_up() {
            self.publish_revision(Bytes::new());
            return;
        }
        match redis
            .client()
            .get::<Option<Vec<u8>>, _>(redis.key("content:rev"))
            .await
        {
            Ok(rev) => self.publish_revision(rev.map(Bytes::from).unwrap_or_default()),
            Err(error) => {
                redis.mark_down(&error);
                self.publish_revision(Bytes::new());
            }
        }
    }

    /// The local revision as an L1 tag.
    fn local_rev(&self) -> Rev {
        let mut rev = Rev::default();
        rev[..8].copy_from_slice(&self.writes.load(Ordering::SeqCst).to_be_bytes());
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
            Ok(_) => Ok(()),
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
        let writes = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        self.l1.clear();
        let Some(redis) = &self.redis else {
            self.publish_revision(local_revision(&self.instance, writes));
            return;
        };
        let outcome: Result<(), Error> = async {
            let rev = set_new_rev(redis).await?;
            self.publish_revision(rev);
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
            // Watchers hold no copy they can trust until the bump has landed.
            self.publish_revision(Bytes::new());
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
                        Ok(_) => {
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

/// Sets `content:rev` to a new random value (returned): every cached value is stale everywhere.
async fn set_new_rev(redis: &Redis) -> Result<Bytes, Error> {
    let rev = Bytes::copy_from_slice(&uuid::Uuid::new_v4().into_bytes());
    redis
        .client()
        .set::<(), _, _>(redis.key("content:rev"), rev.to_vec(), None, None, false)
        .await?;
    Ok(rev)
}

/// The streamed revision without Redis: the instance id and the write counter.
fn local_revision(instance: &[u8; 16], writes: u64) -> Bytes {
    let mut revision = instance.to_vec();
    revision.extend_from_slice(&writes.to_be_bytes());
    Bytes::from(revision)
}

/// With Redis: keeps the streamed revision current while anyone watches it — `content:rev`
/// read again every [`REVISION_POLL`] and whenever Redis goes down or comes back (a write on
/// another replica is also announced by `content:invalidate`, see [`subscribe`]). Stops with
/// `shutdown`.
pub fn watch_revision(cache: Cache, shutdown: tokio_util::sync::CancellationToken) {
    let Some(redis) = cache.redis.clone() else {
        return;
    };
    tokio::spawn(async move {
        let mut up = redis.subscribe();
        let mut ticker = tokio::time::interval(REVISION_POLL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {
                    if cache.revision.receiver_count() == 0 {
                        continue;
                    }
                }
                changed = up.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            cache.refresh_revision().await;
        }
    });
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
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        cache.drop_local();
                        cache.refresh_revision().await;
                    }
                    Err(_) => break,
                },
            }
        }
        let _ = subscriber.quit().await;
    });
    Ok(())
}
