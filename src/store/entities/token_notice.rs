//! The `token_notices` table: the expiry notices the sweeper has settled,
//! one row per (token, kind, horizon, expiry). Its key makes each notice
//! exactly-once (migration 000008).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "token_notices")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub token_id: String,
    /// `expiring_soon` or `expired` (an `EventKind`'s stored name).
    #[sea_orm(primary_key, auto_increment = false)]
    pub kind: String,
    /// The notice horizon, in seconds before the expiry (0 for `expired`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub horizon_secs: i64,
    /// The expiry the notice is about.
    #[sea_orm(primary_key, auto_increment = false)]
    pub expires_at: DateTimeUtc,
    /// Whether an event was recorded (false: settled by a nearer notice).
    pub emitted: bool,
    pub at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
