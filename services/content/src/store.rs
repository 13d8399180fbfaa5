//! The `content` table: one portable SQL text per operation. Updates are conditional on the
//! expected version (optimistic concurrency), lists are keyset-paginated (stable while rows are
//! inserted).

use portico_migrations::Db;
use portico_proto::content as pb;
use sea_orm::{DbErr, QueryResult, Value};

/// A page position: the last item's sort key and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub key: i64,
    pub id: i64,
}

/// The content store.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

const COLUMNS: &str =
    "id, slug, title, body, tags, status, published_at, version, created_at, updated_at";

fn status_name(status: i32) -> &'static str {
    if status == pb::Status::Published as i32 {
        "published"
    } else {
        "draft"
    }
}

/// A row and its sort id.
pub struct Row {
    pub id: i64,
    pub content: pb::Content,
    pub published_at_ms: Option<i64>,
}

fn row(r: &QueryResult) -> Result<Row, DbErr> {
    let tags: String = r.try_get("", "tags")?;
    let status: String = r.try_get("", "status")?;
    let published_at: Option<i64> = r.try_get("", "published_at")?;
    Ok(Row {
        id: r.try_get("", "id")?,
        published_at_ms: published_at,
        content: pb::Content {
            slug: r.try_get("", "slug")?,
            title: r.try_get("", "title")?,
            body: r.try_get("", "body")?,
            tags: serde_json::from_str(&tags).unwrap_or_default(),
            status: if status == "published" {
                pb::Status::Published as i32
            } else {
                pb::Status::Draft as i32
            },
            published_at: published_at
                .map(portico_telemetry::rfc3339_millis)
                .unwrap_or_default(),
            version: r.try_get("", "version")?,
            created_at: portico_telemetry::rfc3339_millis(r.try_get("", "created_at")?),
            updated_at: portico_telemetry::rfc3339_millis(r.try_get("", "updated_at")?),
        },
    })
}

impl Store {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    async fn execute(&self, sql: &str, values: Vec<Value>) -> Result<u64, DbErr> {
        Ok(self.db.execute(sql, values).await?.rows_affected())
    }

    async fn all(&self, sql: &str, values: Vec<Value>) -> Result<Vec<Row>, DbErr> {
        let rows = self.db.query_all(sql, values).await?;
        rows.iter().map(row).collect()
    }

    pub async fn get(&self, slug: &str) -> Result<Option<Row>, DbErr> {
        let sql = format!("SELECT {COLUMNS} FROM content WHERE slug = ?");
        Ok(self.all(&sql, vec![slug.into()]).await?.into_iter().next())
    }

    /// A page, newest first: published items by publication time, or (drafts included) by id.
    pub async fn list(
        &self,
        include_drafts: bool,
        tag: Option<&str>,
        after: Option<Position>,
        limit: u32,
    ) -> Result<Vec<Row>, DbErr> {
        let mut sql = format!("SELECT {COLUMNS} FROM content WHERE 1 = 1");
        let mut values: Vec<Value> = Vec::new();
        if !include_drafts {
            sql.push_str(" AND status = 'published'");
        }
        if let Some(tag) = tag {
            // Tags are [a-z0-9-] (validated), so the quoted form is unambiguous in the JSON text.
            sql.push_str(" AND tags LIKE ?");
            values.push(format!("%\"{tag}\"%").into());
        }
        let order = if include_drafts { "id" } else { "published_at" };
        if let Some(after) = after {
            if include_drafts {
                sql.push_str(" AND id < ?");
                values.push(after.id.into());
            } else {
                sql.push_str(" AND (published_at < ? OR (published_at = ? AND id < ?))");
                values.extend([after.key.into(), after.key.into(), after.id.into()]);
            }
        }
        sql.push_str(&format!(
            " ORDER BY {order} DESC, id DESC LIMIT {}",
            limit + 1
        ));
        self.all(&sql, values).await
    }

    pub async fn insert(&self, c: &pb::Content, now: i64) -> Result<(), DbErr> {
        let published = c.status == pb::Status::Published as i32;
        self.execute(
            "INSERT INTO content (slug, title, body, tags, status, published_at, version, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?)",
            vec![
                c.slug.clone().into(),
                c.title.clone().into(),
                c.body.clone().into(),
                serde_json::to_string(&c.tags).unwrap_or_else(|_| "[]".into()).into(),
                status_name(c.status).into(),
                published.then_some(now).into(),
                now.into(),
                now.into(),
            ],
        )
        .await
        .map(|_| ())
    }

    /// Replaces the fields if `expected_version` is current; true when it was.
    pub async fn update(
        &self,
        c: &pb::Content,
        expected_version: i64,
        now: i64,
    ) -> Result<bool, DbErr> {
        let published = c.status == pb::Status::Published as i32;
        let changed = self
            .execute(
                "UPDATE content SET title = ?, body = ?, tags = ?, status = ?, \
                 published_at = CASE WHEN ? AND published_at IS NULL THEN ? WHEN ? THEN published_at ELSE NULL END, \
                 version = version + 1, updated_at = ? WHERE slug = ? AND version = ?",
                vec![
                    c.title.clone().into(),
                    c.body.clone().into(),
                    serde_json::to_string(&c.tags).unwrap_or_else(|_| "[]".into()).into(),
                    status_name(c.status).into(),
                    published.into(),
                    now.into(),
                    published.into(),
                    now.into(),
                    c.slug.clone().into(),
                    expected_version.into(),
                ],
            )
            .await?;
        Ok(changed == 1)
    }

    /// Deletes the item (only at `expected_version` when given); true when a row went.
    pub async fn delete(&self, slug: &str, expected_version: Option<i64>) -> Result<bool, DbErr> {
        let deleted = match expected_version {
            None => {
                self.execute("DELETE FROM content WHERE slug = ?", vec![slug.into()])
                    .await?
            }
            Some(version) => {
                self.execute(
                    "DELETE FROM content WHERE slug = ? AND version = ?",
                    vec![slug.into(), version.into()],
                )
                .await?
            }
        };
        Ok(deleted == 1)
    }
}
