//! Usage of API keys: requests and provider-reported tokens per day (UTC), key and model alias,
//! in the `llm_usage` table. Requests add to an in-memory ledger that is written every second
//! (one upsert per key, model and day, whatever the traffic) and before every read, so a read
//! on this replica sees every request that ended before it; another replica's last second
//! lands within a second. Prometheus counts the same requests and tokens with bounded labels
//! (outcome, model alias, token kind; never a key id).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use portico_migrations::Db;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use sea_orm::{DbErr, QueryResult, Value};
use tokio_util::sync::CancellationToken;

/// How often the ledger is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Most rows one read returns.
const MAX_ROWS: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    kind: &'static str,
}

struct Metrics {
    requests: Family<OutcomeLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let metrics = Metrics {
            requests: Family::default(),
            tokens: Family::default(),
        };
        portico_telemetry::metrics::register(
            "api_key_requests",
            "Chat and embeddings requests made with API keys, by outcome (ok, failed, cancelled, budget_exceeded)",
            metrics.requests.clone(),
        );
        portico_telemetry::metrics::register(
            "api_key_tokens",
            "Provider-reported tokens of API key requests, by model alias and kind (prompt, completion)",
            metrics.tokens.clone(),
        );
        for outcome in ["ok", "failed", "cancelled", "budget_exceeded"] {
            let _ = metrics.requests.get_or_create(&OutcomeLabels { outcome });
        }
        metrics
    })
}

/// Counts one API key request by how it ended.
pub fn count(outcome: &'static str) {
    metrics()
        .requests
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
}

/// What one request adds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
}

#[derive(Debug, Clone, Default)]
struct Delta {
    user_id: String,
    requests: u64,
    prompt: u64,
    completion: u64,
}

/// One row of `llm_usage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub day: String,
    pub api_key_id: String,
    pub user_id: String,
    pub model: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// What is not written yet, by (day, key id, model).
type Pending = HashMap<(String, String, String), Delta>;

/// The ledger and its table.
#[derive(Clone)]
pub struct Usage {
    db: Db,
    /// (day, key id, model) → what is not written yet.
    pending: Arc<Mutex<Pending>>,
    /// One write at a time, so a read that flushes waits for a write already under way.
    writing: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Usage").finish()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `YYYY-MM-DD` (UTC) of a Unix time in milliseconds.
pub fn day_of(unix_ms: i64) -> String {
    portico_telemetry::rfc3339_millis(unix_ms)[..10].to_owned()
}

fn as_u64(row: &QueryResult, column: &str) -> Result<u64, DbErr> {
    Ok(u64::try_from(row.try_get::<i64>("", column)?).unwrap_or(0))
}

impl Usage {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            pending: Arc::default(),
            writing: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records one request of `key_id` (owned by `user_id`) for `model` with what the provider
    /// reported.
    pub fn record(&self, key_id: &str, user_id: &str, model: &str, tokens: Tokens) {
        let metrics = metrics();
        for (kind, n) in [("prompt", tokens.prompt), ("completion", tokens.completion)] {
            metrics
                .tokens
                .get_or_create(&TokenLabels {
                    model: model.to_owned(),
                    kind,
                })
                .inc_by(n);
        }
        let mut pending = self.lock();
        let delta = pending
            .entry((day_of(now_ms()), key_id.to_owned(), model.to_owned()))
            .or_default();
        user_id.clone_into(&mut delta.user_id);
        delta.requests += 1;
        delta.prompt += tokens.prompt;
        delta.completion += tokens.completion;
    }

    /// Writes what is pending. What cannot be written stays pending for the next flush.
    pub async fn flush(&self) -> Result<(), DbErr> {
        let _turn = self.writing.lock().await;
        let pending = std::mem::take(&mut *self.lock());
        let mut failed: Option<DbErr> = None;
        let mut left = HashMap::new();
        for ((day, key_id, model), delta) in pending {
            if failed.is_none() {
                let written = self
                    .db
                    .execute(
                        "INSERT INTO llm_usage (day, api_key_id, user_id, model, requests, prompt_tokens, \
                         completion_tokens, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
                         ON CONFLICT (day, api_key_id, model) DO UPDATE SET \
                         requests = llm_usage.requests + excluded.requests, \
                         prompt_tokens = llm_usage.prompt_tokens + excluded.prompt_tokens, \
                         completion_tokens = llm_usage.completion_tokens + excluded.completion_tokens, \
                         user_id = excluded.user_id, updated_at = excluded.updated_at",
                        vec![
                            day.clone().into(),
                            key_id.clone().into(),
                            delta.user_id.clone().into(),
                            model.clone().into(),
                            Value::BigInt(i64::try_from(delta.requests).ok()),
                            Value::BigInt(i64::try_from(delta.prompt).ok()),
                            Value::BigInt(i64::try_from(delta.completion).ok()),
                            now_ms().into(),
                        ],
                    )
                    .await;
                match written {
                    Ok(_) => continue,
                    Err(error) => failed = Some(error),
                }
            }
            left.insert((day, key_id, model), delta);
        }
        if left.is_empty() {
            return Ok(());
        }
        // Merge back what was not written with what arrived meanwhile.
        let mut pending = self.lock();
        for (slot, delta) in left {
            let entry = pending.entry(slot).or_default();
            entry.user_id = delta.user_id;
            entry.requests += delta.requests;
            entry.prompt += delta.prompt;
            entry.completion += delta.completion;
        }
        failed.map_or(Ok(()), Err)
    }

    /// Rows of `key_id` and/or `user_id` from `from` to `to` (days, inclusive; empty: open),
    /// after writing what is pending here.
    pub async fn rows(
        &self,
        key_id: &str,
        user_id: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<Row>, DbErr> {
        self.flush().await?;
        let mut sql = String::from(
            "SELECT day, api_key_id, user_id, model, requests, prompt_tokens, completion_tokens \
             FROM llm_usage WHERE 1 = 1",
        );
        let mut values: Vec<Value> = Vec::new();
        for (column, value, op) in [
            ("api_key_id", key_id, "="),
            ("user_id", user_id, "="),
            ("day", from, ">="),
            ("day", to, "<="),
        ] {
            if !value.is_empty() {
                sql.push_str(&format!(" AND {column} {op} ?"));
                values.push(value.into());
            }
        }
        sql.push_str(&format!(
            " ORDER BY day, api_key_id, model LIMIT {MAX_ROWS}"
        ));
        self.db
            .query_all(&sql, values)
            .await?
            .iter()
            .map(|row| {
                Ok(Row {
                    day: row.try_get("", "day")?,
                    api_key_id: row.try_get("", "api_key_id")?,
                    user_id: row.try_get("", "user_id")?,
                    model: row.try_get("", "model")?,
                    requests: as_u64(row, "requests")?,
                    prompt_tokens: as_u64(row, "prompt_tokens")?,
                    completion_tokens: as_u64(row, "completion_tokens")?,
                })
            })
            .collect()
    }

    /// Writes the ledger every [`FLUSH_INTERVAL`], and once more at shutdown.
    pub fn spawn_writer(&self, shutdown: CancellationToken) {
        let usage = self.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(FLUSH_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let stop = tokio::select! {
                    () = shutdown.cancelled() => true,
                    _ = interval.tick() => false,
                };
                if let Err(error) = usage.flush().await {
                    tracing::warn!(%error, "API key usage not written yet; retrying");
                }
                if stop {
                    return;
                }
            }
        });
    }
}
