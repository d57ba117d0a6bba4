//! The hygiene sweeper (`manage::sweeper`, `store::sweep`):
//!
//! - `token_notices`: one row per expiry notice the sweeper has settled, keyed
//!   by (token, kind, horizon, the expiry it was about). The key is what makes
//!   each notice exactly-once across replicas and restarts: the event is
//!   written only by the transaction whose insert of this row took. Keying on
//!   the expiry means an Update that moves it gets fresh notices. `emitted`
//!   is false for a horizon that was settled without an event (a nearer one
//!   was due at the same time; see the sweeper's docs).
//! - `sweep_state`: the instant up to which the sweeper has looked at notice
//!   horizons (its watermark), so each pass reads only what came due since.
//! - Indexes: the expiry and the last write of tokens that have an expiry
//!   (where notices come due), and the last use (or, never used, the
//!   creation) of active tokens (where unused tokens are found). Partial, so
//!   tokens without an expiry and inactive tokens cost them nothing.

use sea_orm::ConnectionTrait;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum TokenNotices {
    Table,
    TokenId,
    Kind,
    HorizonSecs,
    ExpiresAt,
    Emitted,
    At,
}

#[derive(DeriveIden)]
enum SweepState {
    Table,
    Name,
    At,
}

/// The same text on both backends (SQLite has partial and expression
/// indexes too). The queries in `store::sweep` spell these expressions and
/// predicates literally, so both planners match them.
const INDEXES: &[&str] = &[
    "CREATE INDEX IF NOT EXISTS idx_tokens_sweep_expiry ON tokens (expires_at, id) \
     WHERE expires_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS idx_tokens_sweep_written ON tokens (updated_at, id) \
     WHERE expires_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS idx_tokens_sweep_unused ON tokens \
     ((COALESCE(last_used_at, created_at)), id) WHERE state = 'active'",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TokenNotices::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(TokenNotices::TokenId)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(ColumnDef::new(TokenNotices::Kind).string_len(32).not_null())
                    .col(
                        ColumnDef::new(TokenNotices::HorizonSecs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TokenNotices::ExpiresAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(TokenNotices::Emitted).boolean().not_null())
                    .col(
                        ColumnDef::new(TokenNotices::At)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(TokenNotices::TokenId)
                            .col(TokenNotices::Kind)
                            .col(TokenNotices::HorizonSecs)
                            .col(TokenNotices::ExpiresAt),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SweepState::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(SweepState::Name)
                            .string_len(32)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(SweepState::At)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        for sql in INDEXES {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
