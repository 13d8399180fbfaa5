//! The chat gateway's table.

use sea_orm_migration::prelude::*;

pub struct Initial;

impl MigrationName for Initial {
    fn name(&self) -> &str {
        "m20261122_000001_chat_initial"
    }
}

#[derive(Iden)]
enum LlmProviders {
    Table,
    Name,
    BaseUrl,
    Model,
    ApiKeyEnv,
    Priority,
    Enabled,
    TimeoutMs,
    CreatedAt,
    UpdatedAt,
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Initial {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(LlmProviders::Table)
                    .col(
                        ColumnDef::new(LlmProviders::Name)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(LlmProviders::BaseUrl)
                            .string_len(2048)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(LlmProviders::Model)
                            .string_len(256)
                            .not_null(),
                    )
                    // The *name* of the variable holding the key: secrets never enter the database.
                    .col(
                        ColumnDef::new(LlmProviders::ApiKeyEnv)
                            .string_len(128)
                            .null(),
                    )
                    .col(ColumnDef::new(LlmProviders::Priority).integer().not_null())
                    .col(ColumnDef::new(LlmProviders::Enabled).boolean().not_null())
                    .col(ColumnDef::new(LlmProviders::TimeoutMs).big_integer().null())
                    .col(
                        ColumnDef::new(LlmProviders::CreatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(LlmProviders::UpdatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(LlmProviders::Table).to_owned())
            .await
    }
}

/// Usage of API keys (issue 14): requests and provider-reported tokens per day, key and model
/// alias, with the key's owner for per-user sums.
pub struct Usage;

impl MigrationName for Usage {
    fn name(&self) -> &str {
        "m20261215_000002_chat_usage"
    }
}

#[derive(Iden)]
enum LlmUsage {
    Table,
    Day,
    ApiKeyId,
    UserId,
    Model,
    Requests,
    PromptTokens,
    CompletionTokens,
    UpdatedAt,
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Usage {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(LlmUsage::Table)
                    .col(ColumnDef::new(LlmUsage::Day).string_len(10).not_null())
                    .col(ColumnDef::new(LlmUsage::ApiKeyId).string_len(36).not_null())
                    .col(ColumnDef::new(LlmUsage::UserId).string_len(36).not_null())
                    .col(ColumnDef::new(LlmUsage::Model).string_len(256).not_null())
                    .col(ColumnDef::new(LlmUsage::Requests).big_integer().not_null())
                    .col(
                        ColumnDef::new(LlmUsage::PromptTokens)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(LlmUsage::CompletionTokens)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(LlmUsage::UpdatedAt).big_integer().not_null())
                    .primary_key(
                        Index::create()
                            .col(LlmUsage::Day)
                            .col(LlmUsage::ApiKeyId)
                            .col(LlmUsage::Model),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_llm_usage_user_day")
                    .table(LlmUsage::Table)
                    .col(LlmUsage::UserId)
                    .col(LlmUsage::Day)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(LlmUsage::Table).to_owned())
            .await
    }
}
