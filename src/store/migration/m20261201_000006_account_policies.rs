//! Account policies: one row per account that has its own (accounts without
//! one follow the server's defaults). Durations are whole seconds; the CIDR
//! and notice lists are JSON text, so the same schema serves SQLite and
//! PostgreSQL.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AccountPolicies {
    Table,
    AccountId,
    MaxLifetimeSecs,
    RequireExpiry,
    MaxTokensPerOwner,
    DisableUnusedAfterSecs,
    DefaultAllowedCidrs,
    ExpiryNoticeBeforeSecs,
    UpdatedAt,
    UpdatedBy,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AccountPolicies::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(AccountPolicies::AccountId)
                            .string_len(128)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(AccountPolicies::MaxLifetimeSecs)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(AccountPolicies::RequireExpiry)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(
                        ColumnDef::new(AccountPolicies::MaxTokensPerOwner)
                            .integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(AccountPolicies::DisableUnusedAfterSecs)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(AccountPolicies::DefaultAllowedCidrs)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AccountPolicies::ExpiryNoticeBeforeSecs)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AccountPolicies::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AccountPolicies::UpdatedBy)
                            .string_len(128)
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }
}
