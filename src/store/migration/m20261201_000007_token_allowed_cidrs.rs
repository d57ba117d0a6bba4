//! IP binding: the CIDR ranges a token validates from, as JSON text (an
//! array of normalised ranges, like `modules`), NULL for an unbound token, so
//! that Search's `bound` filter is a plain `IS [NOT] NULL` on the row and
//! every existing row reads as unbound.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tokens {
    Table,
    AllowedCidrs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Tokens::Table)
                    .add_column(
                        ColumnDef::new(Tokens::AllowedCidrs)
                            .text()
                            .null()
                            .to_owned(),
                    )
                    .to_owned(),
            )
            .await
    }
}
