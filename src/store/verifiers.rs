//! Verifier upkeep and the warm-start read: writing verifiers behind the
//! request path, counting rows per verifier key (so an operator knows when a
//! retired key can be dropped), and streaming the live tokens a starting
//! process loads into its Validate cache.

use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, EntityTrait, Order, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait, sea_query::NullOrdering,
};

use super::{
    Store,
    convert::{validation_record_from_row, verifier_column},
    entities::{HashColumn, VerifierColumn, token},
};
use crate::{
    domain::{
        TokenId, TokenState,
        token::{SecretHash, StoredVerifier, ValidationRecord},
    },
    error::Result,
};

/// The columns Validate needs (`ValidationRecord`), as the warm start reads
/// them: leaving out the record's other timestamps makes a row several
/// times cheaper to decode.
#[derive(Debug, sea_orm::FromQueryResult)]
pub(super) struct WarmRow {
    pub id: String,
    pub account_id: String,
    pub owner_id: String,
    pub modules: String,
    pub api_version: String,
    pub metadata: String,
    pub state: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub secret_hash: HashColumn,
    pub verifier_key_id: Option<String>,
    pub verifier: Option<VerifierColumn>,
    pub prev_secret_hash: Option<HashColumn>,
    pub prev_secret_expires_at: Option<DateTime<Utc>>,
    pub prev_verifier_key_id: Option<String>,
    pub prev_verifier: Option<VerifierColumn>,
    pub allowed_cidrs: Option<String>,
}

/// A verifier to write for one slot of one token, only while the row still
/// holds what the value was proven against in that slot.
#[derive(Debug, Clone)]
pub struct VerifierWrite {
    pub id: TokenId,
    /// The rotate-grace previous secret's slot rather than the current one.
    pub previous: bool,
    pub expected: Expected,
    pub verifier: StoredVerifier,
}

/// What the slot held when the value was proven; a write lands only while it
/// still does, so a Rotate that commits in between (by any replica, of any
/// version) is never given the old secret's verifier.
#[derive(Debug, Clone)]
pub enum Expected {
    /// This argon2id hash (argon2 proved the value).
    Hash(SecretHash),
    /// This verifier, under an older key (the value matched it).
    Verifier(StoredVerifier),
}

/// Which live tokens a warm start loads.
#[derive(Debug, Clone)]
pub struct WarmQuery {
    /// Verifier key ids this process knows; rows under other keys (or none)
    /// cannot be checked without argon2 and are left to the miss path.
    pub key_ids: Vec<String>,
    /// Used (or, never used, created) at or after this time.
    pub since: DateTime<Utc>,
    pub now: DateTime<Utc>,
    pub limit: u64,
}

/// Live tokens per verifier key id (`None`: no verifier yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    pub key_id: Option<String>,
    pub tokens: i64,
}

/// Selects the columns of a `WarmRow`.
fn validation_columns(select: sea_orm::Select<token::Entity>) -> sea_orm::Select<token::Entity> {
    use token::Column as C;
    select.select_only().columns([
        C::Id,
        C::AccountId,
        C::OwnerId,
        C::Modules,
        C::ApiVersion,
        C::Metadata,
        C::State,
        C::ExpiresAt,
        C::SecretHash,
        C::VerifierKeyId,
        C::Verifier,
        C::PrevSecretHash,
        C::PrevSecretExpiresAt,
        C::PrevVerifierKeyId,
        C::PrevVerifier,
        C::AllowedCidrs,
    ])
}

impl Store {
    /// Writes verifiers in one transaction; returns the rows changed (a row
    /// whose hash changed meanwhile is left alone).
    pub async fn write_verifiers(&self, batch: &[VerifierWrite]) -> Result<usize> {
        use token::Column as C;
        if batch.is_empty() {
            return Ok(0);
        }
        self.bounded(async {
            let _serialised = self.write_guard().await;
            let txn = self.db.begin().await?;
            let mut written = 0;
            for w in batch {
                let key_id = Some(w.verifier.key_id.clone());
                let mac = Some(verifier_column(&w.verifier));
                let (set, hash_col, key_col, mac_col) = if w.previous {
                    (
                        token::ActiveModel {
                            prev_verifier_key_id: Set(key_id),
                            prev_verifier: Set(mac),
                            ..Default::default()
                        },
                        C::PrevSecretHash,
                        C::PrevVerifierKeyId,
                        C::PrevVerifier,
                    )
                } else {
                    (
                        token::ActiveModel {
                            verifier_key_id: Set(key_id),
                            verifier: Set(mac),
                            ..Default::default()
                        },
                        C::SecretHash,
                        C::VerifierKeyId,
                        C::Verifier,
                    )
                };
                let expected = match &w.expected {
                    Expected::Hash(hash) => {
                        Condition::all().add(hash_col.eq(HashColumn(hash.as_phc().to_owned())))
                    }
                    Expected::Verifier(old) => Condition::all()
                        .add(key_col.eq(old.key_id.as_str()))
                        .add(mac_col.eq(verifier_column(old))),
                };
                let update = token::Entity::update_many().set(set).filter(expected);
                written += update
                    .filter(C::Id.eq(w.id.to_string()))
                    .exec(&txn)
                    .await?
                    .rows_affected as usize;
            }
            txn.commit().await?;
            Ok(written)
        })
        .await
    }

    /// How many live (non-revoked) tokens have their current verifier under
    /// each key id.
    pub async fn verifier_key_usage(&self) -> Result<Vec<KeyUsage>> {
        use token::Column as C;
        self.bounded(async {
            let rows: Vec<(Option<String>, i64)> = token::Entity::find()
                .select_only()
                .column(C::VerifierKeyId)
                .column_as(C::Id.count(), "tokens")
                .filter(C::State.ne(TokenState::Revoked.as_str()))
                .group_by(C::VerifierKeyId)
                .into_tuple()
                .all(&self.db)
                .await?;
            Ok(rows
                .into_iter()
                .map(|(key_id, tokens)| KeyUsage { key_id, tokens })
                .collect())
        })
        .await
    }

    /// What Validate needs of one token (a miss, a refresh): the lean row.
    pub async fn find_validation_record(&self, id: TokenId) -> Result<Option<ValidationRecord>> {
        self.bounded(async {
            let row = validation_columns(token::Entity::find_by_id(id.to_string()))
                .into_model::<WarmRow>()
                .one(&self.db)
                .await?;
            row.map(validation_record_from_row).transpose()
        })
        .await
    }

    /// The lean rows of several tokens in one read (Validate's misses,
    /// coalesced by `validation::misses`); ids with no row are left out.
    pub async fn find_validation_records(&self, ids: &[TokenId]) -> Result<Vec<ValidationRecord>> {
        use token::Column as C;
        self.bounded(async {
            let rows = validation_columns(token::Entity::find())
                .filter(C::Id.is_in(ids.iter().map(TokenId::as_str)))
                .into_model::<WarmRow>()
                .all(&self.db)
                .await?;
            rows.into_iter().map(validation_record_from_row).collect()
        })
        .await
    }

    /// Live, unexpired tokens with a verifier under one of `q.key_ids`, most
    /// recently used first (never-used ones last), as a stream: a
    /// million rows are not held in memory at once. Not bounded by the store
    /// timeout: the warm start bounds the whole load itself.
    pub async fn warm_tokens(
        &self,
        q: &WarmQuery,
    ) -> Result<impl Stream<Item = Result<ValidationRecord>> + Send + '_> {
        use token::Column as C;
        let recent = Condition::any().add(C::LastUsedAt.gte(q.since)).add(
            Condition::all()
                .add(C::LastUsedAt.is_null())
                .add(C::CreatedAt.gte(q.since)),
        );
        let unexpired = Condition::any()
            .add(C::ExpiresAt.is_null())
            .add(C::ExpiresAt.gt(q.now));
        let stream = validation_columns(token::Entity::find())
            .filter(C::State.ne(TokenState::Revoked.as_str()))
            .filter(C::VerifierKeyId.is_in(q.key_ids.clone()))
            .filter(unexpired)
            .filter(recent)
            // Served by idx_tokens_last_used, no sort: NULLs (never used) last.
            .order_by_with_nulls(C::LastUsedAt, Order::Desc, NullOrdering::Last)
            .limit(q.limit)
            .into_model::<WarmRow>()
            .stream(&self.db)
            .await?;
        Ok(stream.map(|row| validation_record_from_row(row?)))
    }
}
