//! The `account_policies` table: an account's own policy (accounts without a
//! row follow the server's defaults).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "account_policies")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub account_id: String,
    pub max_lifetime_secs: Option<i64>,
    pub require_expiry: bool,
    pub max_tokens_per_owner: Option<i32>,
    pub disable_unused_after_secs: Option<i64>,
    /// JSON array of CIDR strings.
    pub default_allowed_cidrs: String,
    /// JSON array of seconds, longest first.
    pub expiry_notice_before_secs: String,
    pub updated_at: DateTimeUtc,
    pub updated_by: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
