//! A service's database handle: the pool plus what the last call or probe said of it. While
//! the database is known to be down, calls fail at once instead of each waiting out the pool's
//! acquire timeout; the background probe ([`Db::probe`], driven by the service's health
//! watchdog) is what declares it back.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use sea_orm::{ConnectionTrait as _, DatabaseConnection, DbErr, ExecResult, QueryResult, Value};

/// How often a service's database is probed: the longest a call keeps failing fast after the
/// database is back.
pub const PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The message of the error a call gets while the database is known down.
pub const KNOWN_DOWN: &str = "database unreachable (known down until the next successful probe)";

/// A service's database.
#[derive(Debug, Clone)]
pub struct Db {
    connection: DatabaseConnection,
    up: Arc<AtomicBool>,
}

impl Db {
    /// Wraps a connected pool (assumed up: it just connected).
    pub fn new(connection: DatabaseConnection) -> Self {
        Self {
            connection,
            up: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The pool, for what needs sea-orm itself (migrations).
    pub fn connection(&self) -> &DatabaseConnection {
        &self.connection
    }

    /// False after a call or a probe could not reach the database, until a probe can.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Pings the database and records the answer (no answer within `timeout` is down); what
    /// the health watchdog calls.
    pub async fn probe(&self, timeout: std::time::Duration) -> bool {
        let up = matches!(
            tokio::time::timeout(timeout, self.connection.ping()).await,
            Ok(Ok(()))
        );
        self.up.store(up, Ordering::Relaxed);
        up
    }

    /// Runs a statement written with `?` placeholders (see [`crate::statement`]).
    pub async fn execute(&self, sql: &str, values: Vec<Value>) -> Result<ExecResult, DbErr> {
        self.admit()?;
        let result = self
            .connection
            .execute(crate::statement(&self.connection, sql, values))
            .await;
        self.observe(result)
    }

    /// The first row of a query, if any.
    pub async fn query_one(
        &self,
        sql: &str,
        values: Vec<Value>,
    ) -> Result<Option<QueryResult>, DbErr> {
        self.admit()?;
        let result = self
            .connection
            .query_one(crate::statement(&self.connection, sql, values))
            .await;
        self.observe(result)
    }

    /// Every row of a query.
    pub async fn query_all(
        &self,
        sql: &str,
        values: Vec<Value>,
    ) -> Result<Vec<QueryResult>, DbErr> {
        self.admit()?;
        let result = self
            .connection
            .query_all(crate::statement(&self.connection, sql, values))
            .await;
        self.observe(result)
    }

    fn admit(&self) -> Result<(), DbErr> {
        if self.is_up() {
            Ok(())
        } else {
            Err(DbErr::Custom(KNOWN_DOWN.into()))
        }
    }

    /// Records an unreachable database, so the next calls fail fast.
    fn observe<T>(&self, result: Result<T, DbErr>) -> Result<T, DbErr> {
        if let Err(error) = &result {
            if unreachable(error) {
                self.up.store(false, Ordering::Relaxed);
            }
        }
        result
    }
}

/// Whether `error` says the database could not be reached (not that a statement was wrong).
pub fn unreachable(error: &DbErr) -> bool {
    use sea_orm::{sqlx::Error as Sqlx, RuntimeErr};
    match error {
        // A pool timeout is as likely a busy pool as a dead database: the probe decides.
        DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout) => false,
        DbErr::ConnectionAcquire(_) => true,
        DbErr::Custom(message) => message == KNOWN_DOWN,
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => matches!(
            e,
            Sqlx::Io(_) | Sqlx::Tls(_) | Sqlx::PoolClosed | Sqlx::WorkerCrashed | Sqlx::Protocol(_)
        ),
        _ => false,
    }
}
