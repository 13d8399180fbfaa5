//! Migrations: each service's migrator keeps its own table, applies on boot, and rolls back
//! and forward without touching the others (SQLite and PostgreSQL).

use portico_migrations::Owner;
use sea_orm::ConnectionTrait as _;

use crate::harness::TestSuite;

async fn table_exists(db: &sea_orm::DatabaseConnection, table: &str) -> bool {
    db.execute_unprepared(&format!("SELECT 1 FROM {table} WHERE 1 = 0"))
        .await
        .is_ok()
}

#[tokio::test]
async fn boot_applies_every_services_migrations_and_each_rolls_back_alone() {
    let suite = TestSuite::spawn().await;
    let db = portico_migrations::connect(
        &suite.database_url,
        None,
        portico_migrations::DEFAULT_ACQUIRE_TIMEOUT,
    )
    .await
    .expect("database");
    for owner in Owner::ALL {
        let (applied, pending) = portico_migrations::status(&db, owner)
            .await
            .expect("status");
        let expected = match owner {
            Owner::Auth => 3,
            Owner::Chat => 2,
            Owner::Content => 1,
        };
        assert_eq!(applied.len(), expected, "{}", owner.name());
        assert!(pending.is_empty(), "{}", owner.name());
    }
    for table in [
        "users",
        "refresh_tokens",
        "lockouts",
        "audit_events",
        "email_verifications",
        "password_resets",
        "auth_counters",
        "api_keys",
        "content",
        "llm_providers",
        "llm_usage",
    ] {
        assert!(table_exists(&db, table).await, "{table}");
    }

    portico_migrations::down(&db, Owner::Content, 1)
        .await
        .expect("content down");
    assert!(!table_exists(&db, "content").await);
    assert!(
        table_exists(&db, "users").await,
        "auth's tables are untouched"
    );
    let (_, pending) = portico_migrations::status(&db, Owner::Content)
        .await
        .expect("status");
    assert_eq!(pending.len(), 1);
    let (applied, _) = portico_migrations::status(&db, Owner::Auth)
        .await
        .expect("status");
    assert_eq!(applied.len(), 3, "auth's migration table is its own");

    portico_migrations::up(&db, Owner::Content)
        .await
        .expect("content up");
    assert!(table_exists(&db, "content").await);
}

#[tokio::test]
async fn the_lifecycle_migration_rolls_back_and_forward_on_its_own() {
    let database_url = crate::harness::fresh_database().await;
    let db = portico_migrations::connect(
        &database_url,
        Some(Owner::Auth),
        portico_migrations::DEFAULT_ACQUIRE_TIMEOUT,
    )
    .await
    .expect("database");
    assert!(table_exists(&db, "password_resets").await);
    assert!(table_exists(&db, "api_keys").await);
    // The API keys migration came after it: two steps back.
    portico_migrations::down(&db, Owner::Auth, 2)
        .await
        .expect("api keys and lifecycle down");
    assert!(!table_exists(&db, "api_keys").await);
    assert!(!table_exists(&db, "password_resets").await);
    assert!(!table_exists(&db, "auth_counters").await);
    assert!(
        db.execute_unprepared("SELECT access_jti FROM refresh_tokens WHERE 1 = 0")
            .await
            .is_err(),
        "its columns are gone"
    );
    assert!(
        table_exists(&db, "refresh_tokens").await,
        "the initial tables stay"
    );
    portico_migrations::up(&db, Owner::Auth)
        .await
        .expect("lifecycle up again");
    assert!(db
        .execute_unprepared("SELECT access_jti, successor FROM refresh_tokens WHERE 1 = 0")
        .await
        .is_ok());
}
