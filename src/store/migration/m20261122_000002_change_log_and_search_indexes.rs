//! The change log that keeps replica caches coherent, and the indexes that
//! serve the product's Search filters (pg_trgm for name search on PostgreSQL).

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum TokenChanges {
    Table,
    Seq,
    TokenId,
    Origin,
    At,
}

#[derive(DeriveIden)]
enum Tokens {
    Table,
    AccountId,
    OwnerId,
    State,
    CreatedAt,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TokenChanges::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(TokenChanges::Seq)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(TokenChanges::TokenId)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TokenChanges::Origin)
                            .string_len(32)
                            .not_null(),
                    )
                    // The database's clock, so replicas' clocks never matter.
                    .col(
                        ColumnDef::new(TokenChanges::At)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(super::index(
                "idx_token_changes_at",
                TokenChanges::Table,
                [TokenChanges::At],
            ))
            .await?;
        // Search: account + state + created range.
        manager
            .create_index(super::index(
                "idx_tokens_account_state_created",
                Tokens::Table,
                [
                    Tokens::AccountId,
                    Tokens::State,
                    Tokens::CreatedAt,
                    Tokens::Id,
                ],
            ))
            .await?;
        // Search: owner across accounts (platform callers).
        manager
            .create_index(super::index(
                "idx_tokens_owner_created",
                Tokens::Table,
                [Tokens::OwnerId, Tokens::CreatedAt, Tokens::Id],
            ))
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            // Case-insensitive substring search on names: `lower(name) LIKE '%q%'`.
            let db = manager.get_connection();
            db.execute_unprepared("CREATE EXTENSION IF NOT EXISTS pg_trgm")
                .await?;
            db.execute_unprepared("CREATE INDEX IF NOT EXISTS idx_tokens_name_trgm ON tokens USING gin (lower(name) gin_trgm_ops)").await?;
        }
        Ok(())
    }
}
