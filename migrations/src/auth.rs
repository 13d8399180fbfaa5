//! The auth service's tables.

use sea_orm_migration::prelude::*;

pub struct Initial;

impl MigrationName for Initial {
    fn name(&self) -> &str {
        "m20261122_000001_auth_initial"
    }
}

#[derive(Iden)]
enum Users {
    Table,
    Id,
    Email,
    PasswordHash,
    Role,
    EmailVerified,
    CreatedAt,
    UpdatedAt,
}

#[derive(Iden)]
enum RefreshTokens {
    Table,
    TokenHash,
    FamilyId,
    UserId,
    ExpiresAt,
    SpentAt,
    RevokedAt,
    CreatedAt,
}

#[derive(Iden)]
enum Lockouts {
    Table,
    Email,
    Ip,
    Failures,
    WindowStartedAt,
    LockedUntil,
}

#[derive(Iden)]
enum AuditEvents {
    Table,
    Id,
    EventType,
    UserId,
    Email,
    Ip,
    CorrelationId,
    Detail,
    CreatedAt,
}

#[derive(Iden)]
enum EmailVerifications {
    Table,
    TokenHash,
    UserId,
    ExpiresAt,
    UsedAt,
}

#[derive(Iden)]
enum TokenDenylist {
    Table,
    Jti,
    ExpiresAt,
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Initial {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(
                        ColumnDef::new(Users::Id)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Users::Email)
                            .string_len(254)
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(Users::PasswordHash).string().not_null())
                    .col(ColumnDef::new(Users::Role).string_len(16).not_null())
                    .col(ColumnDef::new(Users::EmailVerified).boolean().not_null())
                    .col(ColumnDef::new(Users::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Users::UpdatedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RefreshTokens::Table)
                    .col(
                        ColumnDef::new(RefreshTokens::TokenHash)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(RefreshTokens::FamilyId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(RefreshTokens::UserId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(RefreshTokens::ExpiresAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(RefreshTokens::SpentAt).big_integer().null())
                    .col(
                        ColumnDef::new(RefreshTokens::RevokedAt)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(RefreshTokens::CreatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_refresh_tokens_family")
                    .table(RefreshTokens::Table)
                    .col(RefreshTokens::FamilyId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_refresh_tokens_user")
                    .table(RefreshTokens::Table)
                    .col(RefreshTokens::UserId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Lockouts::Table)
                    .col(ColumnDef::new(Lockouts::Email).string_len(254).not_null())
                    .col(ColumnDef::new(Lockouts::Ip).string_len(45).not_null())
                    .col(ColumnDef::new(Lockouts::Failures).integer().not_null())
                    .col(
                        ColumnDef::new(Lockouts::WindowStartedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Lockouts::LockedUntil).big_integer().null())
                    .primary_key(Index::create().col(Lockouts::Email).col(Lockouts::Ip))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(
                        ColumnDef::new(AuditEvents::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(AuditEvents::EventType)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(ColumnDef::new(AuditEvents::UserId).string_len(36).null())
                    .col(ColumnDef::new(AuditEvents::Email).string_len(254).null())
                    .col(ColumnDef::new(AuditEvents::Ip).string_len(45).null())
                    .col(
                        ColumnDef::new(AuditEvents::CorrelationId)
                            .string_len(128)
                            .null(),
                    )
                    .col(ColumnDef::new(AuditEvents::Detail).text().null())
                    .col(
                        ColumnDef::new(AuditEvents::CreatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(EmailVerifications::Table)
                    .col(
                        ColumnDef::new(EmailVerifications::TokenHash)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(EmailVerifications::UserId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(EmailVerifications::ExpiresAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(EmailVerifications::UsedAt)
                            .big_integer()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(TokenDenylist::Table)
                    .col(
                        ColumnDef::new(TokenDenylist::Jti)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(TokenDenylist::ExpiresAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            TokenDenylist::Table.into_iden(),
            EmailVerifications::Table.into_iden(),
            AuditEvents::Table.into_iden(),
            Lockouts::Table.into_iden(),
            RefreshTokens::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

/// Account lifecycle (issue 20): what each issued pair was (its access token's `jti` and
/// expiry, so a user's live access tokens can be denylisted; the client's IP and user agent, for
/// the sessions list; the sealed successor pair of a spent token, for the refresh grace
/// period), password reset tokens, and counters for per-account request limits.
pub struct Lifecycle;

impl MigrationName for Lifecycle {
    fn name(&self) -> &str {
        "m20261201_000002_auth_lifecycle"
    }
}

#[derive(Iden)]
enum RefreshLifecycle {
    #[iden = "refresh_tokens"]
    Table,
    AccessJti,
    AccessExpiresAt,
    Ip,
    UserAgent,
    Successor,
}

#[derive(Iden)]
enum PasswordResets {
    Table,
    TokenHash,
    UserId,
    ExpiresAt,
    UsedAt,
    CreatedAt,
}

#[derive(Iden)]
enum AuthCounters {
    Table,
    Name,
    Count,
    WindowStartedAt,
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Lifecycle {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        for column in [
            ColumnDef::new(RefreshLifecycle::AccessJti)
                .string_len(64)
                .null()
                .to_owned(),
            ColumnDef::new(RefreshLifecycle::AccessExpiresAt)
                .big_integer()
                .null()
                .to_owned(),
            ColumnDef::new(RefreshLifecycle::Ip)
                .string_len(45)
                .null()
                .to_owned(),
            ColumnDef::new(RefreshLifecycle::UserAgent)
                .string_len(256)
                .null()
                .to_owned(),
            ColumnDef::new(RefreshLifecycle::Successor)
                .text()
                .null()
                .to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(RefreshLifecycle::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_refresh_tokens_access_jti")
                    .table(RefreshLifecycle::Table)
                    .col(RefreshLifecycle::AccessJti)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PasswordResets::Table)
                    .col(
                        ColumnDef::new(PasswordResets::TokenHash)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(PasswordResets::UserId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(PasswordResets::ExpiresAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(PasswordResets::UsedAt).big_integer().null())
                    .col(
                        ColumnDef::new(PasswordResets::CreatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_password_resets_user")
                    .table(PasswordResets::Table)
                    .col(PasswordResets::UserId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AuthCounters::Table)
                    .col(
                        ColumnDef::new(AuthCounters::Name)
                            .string_len(300)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(AuthCounters::Count).integer().not_null())
                    .col(
                        ColumnDef::new(AuthCounters::WindowStartedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            AuthCounters::Table.into_iden(),
            PasswordResets::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        manager
            .drop_index(
                Index::drop()
                    .name("idx_refresh_tokens_access_jti")
                    .table(RefreshLifecycle::Table)
                    .to_owned(),
            )
            .await?;
        for column in [
            RefreshLifecycle::Successor,
            RefreshLifecycle::UserAgent,
            RefreshLifecycle::Ip,
            RefreshLifecycle::AccessExpiresAt,
            RefreshLifecycle::AccessJti,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(RefreshLifecycle::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

/// API keys for programs (issue 14): a key's keyed hash (never the secret), owner, name,
/// scopes, limits, expiry, revocation and last use.
pub struct ApiKeys;

impl MigrationName for ApiKeys {
    fn name(&self) -> &str {
        "m20261215_000003_auth_api_keys"
    }
}

#[derive(Iden)]
enum ApiKeysTable {
    #[iden = "api_keys"]
    Table,
    Id,
    UserId,
    Name,
    KeyHash,
    Prefix,
    Scopes,
    RequestsPerMinute,
    TokenBudget,
    BudgetWindowSeconds,
    ExpiresAt,
    RevokedAt,
    LastUsedAt,
    CreatedAt,
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for ApiKeys {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ApiKeysTable::Table)
                    .col(
                        ColumnDef::new(ApiKeysTable::Id)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(ApiKeysTable::UserId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ApiKeysTable::Name)
                            .string_len(100)
                            .not_null(),
                    )
                    // HMAC-SHA256 (or SHA-256) of the secret, hex: the lookup key.
                    .col(
                        ColumnDef::new(ApiKeysTable::KeyHash)
                            .string_len(64)
                            .not_null()
                            .unique_key(),
                    )
                    .col(
                        ColumnDef::new(ApiKeysTable::Prefix)
                            .string_len(16)
                            .not_null(),
                    )
                    // Space-separated: `chat content:write admin`.
                    .col(
                        ColumnDef::new(ApiKeysTable::Scopes)
                            .string_len(200)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ApiKeysTable::RequestsPerMinute)
                            .integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(ApiKeysTable::TokenBudget)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(ApiKeysTable::BudgetWindowSeconds)
                            .big_integer()
                            .null(),
                    )
                    .col(ColumnDef::new(ApiKeysTable::ExpiresAt).big_integer().null())
                    .col(ColumnDef::new(ApiKeysTable::RevokedAt).big_integer().null())
                    .col(
                        ColumnDef::new(ApiKeysTable::LastUsedAt)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(ApiKeysTable::CreatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_api_keys_user")
                    .table(ApiKeysTable::Table)
                    .col(ApiKeysTable::UserId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ApiKeysTable::Table).to_owned())
            .await
    }
}
