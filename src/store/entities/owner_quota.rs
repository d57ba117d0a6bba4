//! The `owner_quotas` table: live (non-revoked) token count per owner. A
//! conditional `UPDATE ... WHERE live_tokens < limit` on this row enforces the
//! per-owner limit without races, on SQLite and PostgreSQL alike.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "owner_quotas")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub account_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub owner_id: String,
    pub live_tokens: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
