//! Redis for Portico's services: one handle that connects in the background (a process starts
//! while Redis is down), keeps every key under `REDIS_KEY_PREFIX`, fails a command fast (a
//! per-command timeout instead of waiting for a reconnect), and knows whether Redis is up — so a
//! caller skips Redis at once while it is down, and a background probe notices when it returns.

use std::{path::Path, sync::Arc, time::Duration};

pub use fred;
use fred::prelude::*;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often Redis is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// A shared Redis connection.
#[derive(Clone)]
pub struct Redis {
    client: Client,
    prefix: Arc<str>,
    up: Arc<watch::Sender<bool>>,
    command_timeout: Duration,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("up", &self.is_up())
            .finish()
    }
}

impl Redis {
    /// [`Redis::connect`] when `url` is set (`REDIS_URL` and friends are optional): `None`
    /// when it is not.
    pub fn connect_optional(
        url: Option<&secrecy::SecretString>,
        prefix: &str,
        command_timeout: Duration,
        tls_ca: Option<&Path>,
        shutdown: CancellationToken,
    ) -> Result<Option<Self>, Error> {
        use secrecy::ExposeSecret as _;
        url.map(|url| {
            Self::connect(
                url.expose_secret(),
                prefix,
                command_timeout,
                tls_ca,
                shutdown,
            )
        })
        .transpose()
    }

    /// A handle to `url`, connecting in the background. Commands give up after
    /// `command_timeout`. The recovery probe stops with `shutdown`.
    pub fn connect(
        url: &str,
        prefix: &str,
        command_timeout: Duration,
        tls_ca: Option<&Path>,
        shutdown: CancellationToken,
    ) -> Result<Self, Error> {
        let config = config(url, tls_ca)?;
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = command_timeout.max(Duration::from_millis(250));
                c.internal_command_timeout = command_timeout.max(Duration::from_millis(250));
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| p.default_command_timeout = command_timeout)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()?;
        let _connection = client.connect();
        let redis = Self {
            client,
            prefix: prefix.into(),
            up: Arc::new(watch::Sender::new(true)),
            command_timeout,
        };
        redis.spawn_probe(shutdown);
        Ok(redis)
    }

    /// The client, for commands.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `REDIS_KEY_PREFIX` + `key`.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The configured prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// False after a command or a probe failed, until a probe reaches Redis again.
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Follows [`Redis::is_up`]: one source of truth for "skip Redis" and for health.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// Keeps `dependency_up{component, dependency="redis"}` equal to [`Redis::is_up`] for as
    /// long as this handle (or a clone) lives: one series per component that uses Redis.
    pub fn report_up(&self, component: &'static str) {
        let mut up = self.subscribe();
        tokio::spawn(async move {
            loop {
                let now = *up.borrow_and_update();
                portico_telemetry::metrics::dependency_up(component, "redis", now);
                if up.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Records a failed command: callers skip Redis until the probe succeeds.
    pub fn mark_down(&self, error: &Error) {
        self.set_up(false, Some(error));
    }

    fn set_up(&self, up: bool, error: Option<&Error>) {
        let changed = self
            .up
            .send_if_modified(|state| std::mem::replace(state, up) != up);
        match (changed, up) {
            (true, true) => tracing::info!("redis reachable again"),
            (true, false) => match error {
                Some(error) => {
                    tracing::warn!(%error, "redis unreachable; using the fallback until it returns")
                }
                None => {
                    tracing::warn!("redis unreachable (probe); using the fallback until it returns")
                }
            },
            _ => {}
        }
    }

    /// Deletes every key under `REDIS_KEY_PREFIX` + `prefix` with SCAN + UNLINK (never KEYS, so a
    /// busy Redis is not blocked); returns how many were removed.
    pub async fn unlink_prefix(&self, prefix: &str) -> Result<u64, Error> {
        use fred::types::scan::Scanner as _;
        use futures_util::TryStreamExt as _;

        let pattern = format!("{}*", escape_glob(&self.key(prefix)));
        let mut pages = self.client.scan(pattern, Some(500), None);
        let mut removed = 0;
        while let Some(mut page) = pages.try_next().await? {
            if let Some(keys) = page.take_results() {
                if !keys.is_empty() {
                    removed += self.client.unlink::<u64, _>(keys).await?;
                }
            }
        }
        Ok(removed)
    }

    /// The keys under `REDIS_KEY_PREFIX` + `prefix` (SCAN, never KEYS), without
    /// `REDIS_KEY_PREFIX`, at most `max` of them; the flag is true when more exist.
    pub async fn scan_prefix(
        &self,
        prefix: &str,
        max: usize,
    ) -> Result<(Vec<String>, bool), Error> {
        use fred::types::scan::Scanner as _;
        use futures_util::TryStreamExt as _;

        let pattern = format!("{}*", escape_glob(&self.key(prefix)));
        let mut pages = self.client.scan(pattern, Some(500), None);
        let mut keys = Vec::new();
        while let Some(mut page) = pages.try_next().await? {
            for key in page.take_results().unwrap_or_default() {
                let Some(key) = key.as_str() else { continue };
                if keys.len() == max {
                    return Ok((keys, true));
                }
                keys.push(key.strip_prefix(&*self.prefix).unwrap_or(key).to_owned());
            }
        }
        Ok((keys, false))
    }

    /// The string values of `keys` (each under `REDIS_KEY_PREFIX`) in one pipeline; `None`
    /// for a key that is gone.
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<String>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.client.pipeline();
        for key in keys {
            let () = pipeline.get(self.key(key)).await?;
        }
        pipeline.all().await
    }

    /// PING with the command timeout.
    pub async fn ping(&self) -> bool {
        matches!(
            tokio::time::timeout(self.command_timeout, self.client.ping::<String>(None)).await,
            Ok(Ok(_))
        )
    }

    fn spawn_probe(&self, shutdown: CancellationToken) {
        let redis = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(PROBE_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => {
                        let _ = redis.client.quit().await;
                        return;
                    }
                    _ = ticker.tick() => {}
                }
                // Probe while up too: an idle replica must notice an outage before its next
                // request pays a command timeout, and its readiness must say so.
                let reachable = redis.ping().await;
                redis.set_up(reachable, None);
            }
        });
    }
}

/// The client configuration of `url`. `rediss://` is TLS (rustls, SNI from the host name, the
/// system's roots or `tls_ca`); a handshake that fails — a plaintext port, a certificate the
/// CA did not sign — fails the connection, never falls back to plaintext.
pub fn config(url: &str, tls_ca: Option<&Path>) -> Result<Config, Error> {
    let mut config = Config::from_url(url)?;
    if url.starts_with("rediss://") {
        let client = portico_tls::store_client(tls_ca).map_err(|e| {
            Error::new(
                fred::error::ErrorKind::Tls,
                format!("REDIS_TLS_CA_FILE: {e}"),
            )
        })?;
        config.tls = Some(fred::types::config::TlsConnector::from(client).into());
    }
    Ok(config)
}

/// Escapes Redis glob characters so a prefix matches only itself.
fn escape_glob(raw: &str) -> String {
    let mut escaped = String::with_capacity(raw.len());
    for c in raw.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(super::escape_glob("t:[a]*?\\"), "t:\\[a\\]\\*\\?\\\\");
    }
}
