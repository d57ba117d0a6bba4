//! Keyed verifiers beside the argon2id hashes (current and rotate-grace
//! previous), so a cache miss costs one store read and no argon2. Existing
//! rows get none: each such token is verified by argon2 once, on its first
//! use, and its verifier is then written behind.
//!
//! And an index on `last_used_at`, so the warm start reads tokens most
//! recently used first without sorting the whole table.

use sea_orm::ConnectionTrait;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tokens {
    Table,
    LastUsedAt,
    VerifierKeyId,
    Verifier,
    PrevVerifierKeyId,
    PrevVerifier,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in [
            ColumnDef::new(Tokens::VerifierKeyId)
                .string_len(32)
                .null()
                .to_owned(),
            ColumnDef::new(Tokens::Verifier).binary().null().to_owned(),
            ColumnDef::new(Tokens::PrevVerifierKeyId)
                .string_len(32)
                .null()
                .to_owned(),
            ColumnDef::new(Tokens::PrevVerifier)
                .binary()
                .null()
                .to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Tokens::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        if manager.get_database_backend() == sea_orm::DbBackend::Postgres {
            // Descending with NULLs last: the warm start's order.
            manager
                .get_connection()
                .execute_unprepared(
                    "CREATE INDEX IF NOT EXISTS idx_tokens_last_used \
                     ON tokens (last_used_at DESC NULLS LAST)",
                )
                .await?;
        } else {
            // SQLite sorts NULLs first, so a descending scan of this index
            // yields NULLs (never used) last: the warm start's order.
            manager
                .create_index(super::index(
                    "idx_tokens_last_used",
                    Tokens::Table,
                    [Tokens::LastUsedAt],
                ))
                .await?;
        }
        Ok(())
    }
}
