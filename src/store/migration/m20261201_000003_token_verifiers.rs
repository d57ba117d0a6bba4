//! Keyed verifiers beside the argon2id hashes (current and rotate-grace
//! previous), so a cache miss costs one store read and no argon2. Existing
//! rows get none: each such token is verified by argon2 once, on its first
//! use, and its verifier is then written behind.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tokens {
    Table,
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
        Ok(())
    }
}
