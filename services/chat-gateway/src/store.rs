//! The `llm_providers` table. The configuration (file or variables) defines each provider;
//! the table keeps what operators change at runtime — priority and enabled — so a change made
//! through the admin route reaches every replica and survives restarts.

use portico_migrations::Db;
use sea_orm::{DbErr, Value};

use crate::providers::{Config, Spec};

/// A provider's runtime settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    pub name: String,
    pub priority: i32,
    pub enabled: bool,
}

/// The provider store.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Store {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Records the configured providers and named deployments. A new one starts with its
    /// configured priority and enabled flag; a known one keeps the values the table holds
    /// (runtime changes win). A deployment's row carries its provider's URL and key variable and
    /// its own model name.
    pub async fn register(&self, config: &Config) -> Result<(), DbErr> {
        let mut rows: Vec<Spec> = config.providers.clone();
        for alias in &config.aliases {
            for deployment in &alias.deployments {
                let (Some(name), Some(provider)) = (
                    &deployment.name,
                    config
                        .providers
                        .iter()
                        .find(|p| p.name == deployment.provider),
                ) else {
                    continue;
                };
                rows.push(Spec {
                    name: name.clone(),
                    model: deployment.model.clone(),
                    priority: deployment.priority.unwrap_or(0),
                    enabled: deployment.enabled,
                    ..provider.clone()
                });
            }
        }
        self.insert(&rows).await
    }

    async fn insert(&self, specs: &[Spec]) -> Result<(), DbErr> {
        let sql = "INSERT INTO llm_providers \
             (name, base_url, model, api_key_env, priority, enabled, timeout_ms, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET base_url = excluded.base_url, model = excluded.model, \
             api_key_env = excluded.api_key_env, timeout_ms = excluded.timeout_ms";
        for spec in specs {
            let now = now_ms();
            let values: Vec<Value> = vec![
                spec.name.clone().into(),
                spec.base_url.clone().into(),
                spec.model.clone().into(),
                spec.api_key_env.clone().into(),
                spec.priority.into(),
                spec.enabled.into(),
                (spec.timeout.as_millis() as i64).into(),
                now.into(),
                now.into(),
            ];
            self.db.execute(sql, values).await?;
        }
        Ok(())
    }

    /// Every provider's runtime settings.
    pub async fn runtime(&self) -> Result<Vec<Runtime>, DbErr> {
        let rows = self
            .db
            .query_all(
                "SELECT name, priority, enabled FROM llm_providers",
                Vec::new(),
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Runtime {
                    name: r.try_get("", "name")?,
                    priority: r.try_get("", "priority")?,
                    enabled: r.try_get("", "enabled")?,
                })
            })
            .collect()
    }

    /// Stores a provider's new runtime settings.
    pub async fn set(&self, runtime: &Runtime) -> Result<bool, DbErr> {
        let result = self
            .db
            .execute(
                "UPDATE llm_providers SET priority = ?, enabled = ?, updated_at = ? WHERE name = ?",
                vec![
                    runtime.priority.into(),
                    runtime.enabled.into(),
                    now_ms().into(),
                    runtime.name.clone().into(),
                ],
            )
            .await?;
        Ok(result.rows_affected() == 1)
    }
}
