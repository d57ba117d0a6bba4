//! The `token_events` table: the append-only audit trail.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "token_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub token_id: String,
    pub account_id: String,
    /// Owner of the token the event is about (so self-service callers can list
    /// the events of their own tokens).
    pub owner_id: String,
    pub kind: String,
    pub actor_token_id: String,
    pub actor_owner_id: String,
    pub at: DateTimeUtc,
    pub detail: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
