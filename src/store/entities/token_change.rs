//! The `token_changes` table: one row per committed token mutation, written in
//! the mutation's own transaction. Replicas read it (and get a NOTIFY on
//! PostgreSQL) to refresh their Validate caches. Old rows are pruned.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "token_changes")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub token_id: String,
    /// Instance id of the replica that made the change, for diagnosing
    /// propagation (every replica, the origin included, refreshes on it).
    pub origin: String,
    pub at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
