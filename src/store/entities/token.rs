//! The `tokens` table: one row per token, revoked ones kept as tombstones.

use sea_orm::entity::prelude::*;

use super::{HashColumn, VerifierColumn};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tokens")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub account_id: String,
    pub owner_id: String,
    pub created_by: String,
    pub updated_by: String,
    pub name: String,
    pub description: String,
    /// JSON array of module names.
    pub modules: String,
    pub api_version: String,
    /// JSON object of string metadata.
    pub metadata: String,
    /// `active`, `disabled` or `revoked`.
    pub state: String,
    pub state_reason: String,
    pub secret_hash: HashColumn,
    pub prev_secret_hash: Option<HashColumn>,
    pub prev_secret_expires_at: Option<DateTimeUtc>,
    /// Id of the server-held key the verifier was made under.
    pub verifier_key_id: Option<String>,
    /// Keyed MAC of the token's id and secret (`validation::verifier`).
    pub verifier: Option<VerifierColumn>,
    pub prev_verifier_key_id: Option<String>,
    pub prev_verifier: Option<VerifierColumn>,
    pub hint: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub last_used_at: Option<DateTimeUtc>,
    pub expires_at: Option<DateTimeUtc>,
    pub disabled_at: Option<DateTimeUtc>,
    pub revoked_at: Option<DateTimeUtc>,
    /// JSON array of CIDR ranges; NULL: unbound (valid from anywhere).
    pub allowed_cidrs: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
