//! Audit retention: the pruner deletes events older than the retention period
//! in small batches, and `tokend events export` reads time ranges; both find
//! their rows through an index on the event time.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum TokenEvents {
    Table,
    At,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(super::index(
                "idx_token_events_at",
                TokenEvents::Table,
                [TokenEvents::At, TokenEvents::Id],
            ))
            .await
    }
}
