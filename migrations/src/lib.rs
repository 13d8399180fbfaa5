//! Database migrations, one migrator per service. Each migrator keeps its own migration
//! table (`seaql_migrations_<service>`), so services migrate independently and never touch
//! another service's tables (docs/CONTRACT.md §9). The same schema runs on SQLite and PostgreSQL;
//! times are stored as Unix milliseconds (`BIGINT`) so both engines compare them the same way.

use std::time::Duration;

use sea_orm_migration::prelude::*;

mod auth;
mod chat;
mod content;
mod db;

pub use db::{unreachable, Db, KNOWN_DOWN, PROBE_INTERVAL};

pub use sea_orm_migration::MigratorTrait;

/// Migrations of the auth service (`users`, `refresh_tokens`, `lockouts`, `audit_events`,
/// `email_verifications`, `token_denylist`, `password_resets`, `auth_counters`, `api_keys`).
pub struct AuthMigrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for AuthMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(auth::Initial),
            Box::new(auth::Lifecycle),
            Box::new(auth::ApiKeys),
        ]
    }

    fn migration_table_name() -> DynIden {
        Alias::new("seaql_migrations_auth").into_iden()
    }
}

/// Migrations of the content service (`content`).
pub struct ContentMigrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for ContentMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(content::Initial)]
    }

    fn migration_table_name() -> DynIden {
        Alias::new("seaql_migrations_content").into_iden()
    }
}

/// Migrations of the chat gateway (`llm_providers`, `llm_usage`).
pub struct ChatMigrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for ChatMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(chat::Initial), Box::new(chat::Usage)]
    }

    fn migration_table_name() -> DynIden {
        Alias::new("seaql_migrations_chat").into_iden()
    }
}

/// A service that owns tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The auth service.
    Auth,
    /// The content service.
    Content,
    /// The chat gateway.
    Chat,
}

impl Owner {
    /// Every owner, in the order `portico migrate` processes them.
    pub const ALL: [Owner; 3] = [Owner::Auth, Owner::Content, Owner::Chat];

    /// The owner's name as operators type it.
    pub fn name(self) -> &'static str {
        match self {
            Owner::Auth => "auth",
            Owner::Content => "content",
            Owner::Chat => "chat-gateway",
        }
    }
}

/// Applies every pending migration of `owner`.
pub async fn up(db: &sea_orm::DatabaseConnection, owner: Owner) -> Result<(), DbErr> {
    match owner {
        Owner::Auth => AuthMigrator::up(db, None).await,
        Owner::Content => ContentMigrator::up(db, None).await,
        Owner::Chat => ChatMigrator::up(db, None).await,
    }
}

/// Rolls back the last `steps` migrations of `owner`.
pub async fn down(db: &sea_orm::DatabaseConnection, owner: Owner, steps: u32) -> Result<(), DbErr> {
    match owner {
        Owner::Auth => AuthMigrator::down(db, Some(steps)).await,
        Owner::Content => ContentMigrator::down(db, Some(steps)).await,
        Owner::Chat => ChatMigrator::down(db, Some(steps)).await,
    }
}

/// `(applied, pending)` migration names of `owner`.
pub async fn status(
    db: &sea_orm::DatabaseConnection,
    owner: Owner,
) -> Result<(Vec<String>, Vec<String>), DbErr> {
    async fn of<M: MigratorTrait>(
        db: &sea_orm::DatabaseConnection,
    ) -> Result<(Vec<String>, Vec<String>), DbErr> {
        let applied = M::get_applied_migrations(db).await?;
        let pending = M::get_pending_migrations(db).await?;
        Ok((
            applied.iter().map(|m| m.name().to_owned()).collect(),
            pending.iter().map(|m| m.name().to_owned()).collect(),
        ))
    }
    match owner {
        Owner::Auth => of::<AuthMigrator>(db).await,
        Owner::Content => of::<ContentMigrator>(db).await,
        Owner::Chat => of::<ChatMigrator>(db).await,
    }
}

/// Serialises SQLite initialisation (journal mode, migrations) within the process.
static SQLITE_INIT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a call waits for a pool connection by default (`DATABASE_ACQUIRE_TIMEOUT`).
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens the database at `url` (creating a SQLite file's directory), and runs `owner`'s
/// migrations when given. Fails fast: a database that does not answer within
/// `acquire_timeout` is an error, not a hang.
pub async fn connect(
    url: &str,
    migrate: Option<Owner>,
    acquire_timeout: Duration,
) -> Result<sea_orm::DatabaseConnection, DbErr> {
    let mut options = options(url)?;
    options
        .connect_timeout(acquire_timeout)
        .acquire_timeout(acquire_timeout)
        .max_connections(if url.starts_with("sqlite:") { 4 } else { 16 });
    let db = sea_orm::Database::connect(options).await?;
    let sqlite = url.starts_with("sqlite:");
    // The services of `portico serve` share one SQLite file. A migration's read-then-write
    // transaction gets SQLITE_BUSY at once when another writer holds the lock (SQLite skips the
    // busy handler on lock upgrades), so initialisation takes turns within the process.
    let _turn = if sqlite {
        Some(SQLITE_INIT.lock().await)
    } else {
        None
    };
    if sqlite && !url.contains(":memory:") && !url.contains("mode=memory") {
        // WAL lets readers and a writer work at once.
        use sea_orm::ConnectionTrait as _;
        db.execute_unprepared("PRAGMA journal_mode=WAL").await?;
    }
    if let Some(owner) = migrate {
        up(&db, owner).await?;
    }
    Ok(db)
}

/// A lazily connecting pool for health probes: the caller starts even while the database is
/// down, and each probe reports its state.
pub async fn connect_lazy(url: &str) -> Result<sea_orm::DatabaseConnection, DbErr> {
    let mut options = options(url)?;
    options
        .connect_lazy(true)
        .connect_timeout(Duration::from_secs(1))
        .acquire_timeout(Duration::from_secs(1))
        .max_connections(2);
    sea_orm::Database::connect(options).await
}

fn options(url: &str) -> Result<sea_orm::ConnectOptions, DbErr> {
    if let Some(dir) = sqlite_path(url)
        .and_then(|path| std::path::Path::new(path).parent())
        .filter(|dir| !dir.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .map_err(|error| DbErr::Custom(format!("cannot create {}: {error}", dir.display())))?;
    }
    let mut options = sea_orm::ConnectOptions::new(url.to_owned());
    options.sqlx_logging(false);
    Ok(options)
}

/// The file path of a `sqlite://path?…` or `sqlite:path` URL (not of in-memory databases).
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && !path.starts_with(':')).then_some(path)
}

/// A statement for `db` from SQL written with `?` placeholders (they become `$1…` on
/// PostgreSQL), so services write one portable SQL text.
pub fn statement(
    db: &sea_orm::DatabaseConnection,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> sea_orm::Statement {
    use sea_orm::ConnectionTrait as _;
    let backend = db.get_database_backend();
    let sql = if backend == sea_orm::DbBackend::Postgres {
        let mut numbered = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                numbered.push_str(&format!("${n}"));
            } else {
                numbered.push(c);
            }
        }
        numbered
    } else {
        sql.to_owned()
    };
    sea_orm::Statement::from_sql_and_values(backend, sql, values)
}
