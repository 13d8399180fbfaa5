//! The content service's table.

use sea_orm_migration::prelude::*;

pub struct Initial;

impl MigrationName for Initial {
    fn name(&self) -> &str {
        "m20261122_000001_content_initial"
    }
}

#[derive(Iden)]
enum Content {
    Table,
    Id,
    Slug,
    Title,
    Body,
    Tags,
    Status,
    PublishedAt,
    Version,
    CreatedAt,
    UpdatedAt,
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Initial {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Content::Table)
                    .col(
                        ColumnDef::new(Content::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Content::Slug)
                            .string_len(100)
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(Content::Title).string_len(200).not_null())
                    .col(ColumnDef::new(Content::Body).text().not_null())
                    // JSON array of tags; at most 16, so a join table buys nothing.
                    .col(ColumnDef::new(Content::Tags).text().not_null())
                    .col(ColumnDef::new(Content::Status).string_len(16).not_null())
                    .col(ColumnDef::new(Content::PublishedAt).big_integer().null())
                    .col(ColumnDef::new(Content::Version).big_integer().not_null())
                    .col(ColumnDef::new(Content::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Content::UpdatedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_content_status_published")
                    .table(Content::Table)
                    .col(Content::Status)
                    .col(Content::PublishedAt)
                    .col(Content::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Content::Table).to_owned())
            .await
    }
}
