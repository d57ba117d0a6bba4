//! Tokens, their audit events and per-owner live-token counts.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tokens {
    Table,
    Id,
    AccountId,
    OwnerId,
    CreatedBy,
    UpdatedBy,
    Name,
    Description,
    Modules,
    ApiVersion,
    Metadata,
    State,
    StateReason,
    SecretHash,
    PrevSecretHash,
    PrevSecretExpiresAt,
    Hint,
    CreatedAt,
    UpdatedAt,
    LastUsedAt,
    ExpiresAt,
    DisabledAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum TokenEvents {
    Table,
    Id,
    TokenId,
    AccountId,
    OwnerId,
    Kind,
    ActorTokenId,
    ActorOwnerId,
    At,
    Detail,
}

#[derive(DeriveIden)]
enum OwnerQuotas {
    Table,
    AccountId,
    OwnerId,
    LiveTokens,
}

fn text(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().not_null().to_owned()
}

fn ts(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

fn ts_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .null()
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Tokens::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Tokens::Id)
                            .string_len(16)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Tokens::AccountId).string_len(128).not_null())
                    .col(ColumnDef::new(Tokens::OwnerId).string_len(128).not_null())
                    .col(ColumnDef::new(Tokens::CreatedBy).string_len(128).not_null())
                    .col(ColumnDef::new(Tokens::UpdatedBy).string_len(128).not_null())
                    .col(text(Tokens::Name))
                    .col(text(Tokens::Description))
                    .col(text(Tokens::Modules))
                    .col(ColumnDef::new(Tokens::ApiVersion).string_len(32).not_null())
                    .col(text(Tokens::Metadata))
                    .col(ColumnDef::new(Tokens::State).string_len(16).not_null())
                    .col(text(Tokens::StateReason))
                    .col(text(Tokens::SecretHash))
                    .col(ColumnDef::new(Tokens::PrevSecretHash).text().null())
                    .col(ts_null(Tokens::PrevSecretExpiresAt))
                    .col(text(Tokens::Hint))
                    .col(ts(Tokens::CreatedAt))
                    .col(ts(Tokens::UpdatedAt))
                    .col(ts_null(Tokens::LastUsedAt))
                    .col(ts_null(Tokens::ExpiresAt))
                    .col(ts_null(Tokens::DisabledAt))
                    .col(ts_null(Tokens::RevokedAt))
                    .to_owned(),
            )
            .await?;
        // Search lists newest first within an account, optionally for one owner.
        manager
            .create_index(super::index(
                "idx_tokens_account_created",
                Tokens::Table,
                [Tokens::AccountId, Tokens::CreatedAt, Tokens::Id],
            ))
            .await?;
        manager
            .create_index(super::index(
                "idx_tokens_account_owner_created",
                Tokens::Table,
                [
                    Tokens::AccountId,
                    Tokens::OwnerId,
                    Tokens::CreatedAt,
                    Tokens::Id,
                ],
            ))
            .await?;
        manager
            .create_index(super::index(
                "idx_tokens_created",
                Tokens::Table,
                [Tokens::CreatedAt, Tokens::Id],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(TokenEvents::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(TokenEvents::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(TokenEvents::TokenId)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TokenEvents::AccountId)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TokenEvents::OwnerId)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(ColumnDef::new(TokenEvents::Kind).string_len(16).not_null())
                    .col(
                        ColumnDef::new(TokenEvents::ActorTokenId)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TokenEvents::ActorOwnerId)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(ts(TokenEvents::At))
                    .col(text(TokenEvents::Detail))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(super::index(
                "idx_token_events_token",
                TokenEvents::Table,
                [TokenEvents::TokenId, TokenEvents::Id],
            ))
            .await?;
        manager
            .create_index(super::index(
                "idx_token_events_account",
                TokenEvents::Table,
                [TokenEvents::AccountId, TokenEvents::Id],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(OwnerQuotas::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(OwnerQuotas::AccountId)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OwnerQuotas::OwnerId)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OwnerQuotas::LiveTokens)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(OwnerQuotas::AccountId)
                            .col(OwnerQuotas::OwnerId),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
