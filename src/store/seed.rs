//! Bulk loading, for benchmarks that need a large store quickly (e.g. the
//! million tokens `tokend-bench move` copies). Not used by the service: its
//! writes go through `tokens`, one checked transaction per change.

use std::collections::BTreeMap;

use sea_orm::{
    EntityTrait, TransactionTrait,
    sea_query::{Expr, OnConflict},
};

use super::{
    Store,
    convert::{event_to_active, token_to_active},
    entities::{owner_quota, token, token_change, token_event},
};
use crate::{
    domain::{NewEvent, Token, TokenState},
    error::Result,
};

impl Store {
    /// Inserts new tokens, each with its audit event and change-log row, and
    /// adds the live ones to their owners' counts, all in one transaction.
    /// The per-owner limit is not checked. Batches of a few hundred to a few
    /// thousand tokens suit both databases.
    pub async fn insert_tokens_bulk(&self, batch: &[(Token, NewEvent)]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut live: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for (t, _) in batch {
            if t.state != TokenState::Revoked {
                *live
                    .entry((t.account_id.as_str(), t.owner_id.as_str()))
                    .or_default() += 1;
            }
        }
        let tokens = batch
            .iter()
            .map(|(t, _)| token_to_active(t))
            .collect::<Result<Vec<_>>>()?;
        // Each statement stays under SQLite's 32766 bound parameters.
        let chunk = 30_000 / 32;
        let _serialised = self.write_guard().await;
        let txn = self.db.begin().await?;
        for part in tokens.chunks(chunk) {
            token::Entity::insert_many(part.to_vec())
                .exec_without_returning(&txn)
                .await?;
        }
        for part in batch.chunks(chunk) {
            token_event::Entity::insert_many(part.iter().map(|(t, e)| event_to_active(t, e)))
                .exec_without_returning(&txn)
                .await?;
            token_change::Entity::insert_many(part.iter().map(|(t, _)| {
                token_change::ActiveModel {
                    token_id: sea_orm::ActiveValue::Set(t.id.to_string()),
                    origin: sea_orm::ActiveValue::Set(self.instance.clone()),
                    ..Default::default()
                }
            }))
            .exec_without_returning(&txn)
            .await?;
        }
        let quotas: Vec<owner_quota::ActiveModel> = live
            .into_iter()
            .map(|((account, owner), n)| owner_quota::ActiveModel {
                account_id: sea_orm::ActiveValue::Set(account.to_owned()),
                owner_id: sea_orm::ActiveValue::Set(owner.to_owned()),
                live_tokens: sea_orm::ActiveValue::Set(n),
            })
            .collect();
        for part in quotas.chunks(chunk) {
            owner_quota::Entity::insert_many(part.to_vec())
                .on_conflict(
                    OnConflict::columns([
                        owner_quota::Column::AccountId,
                        owner_quota::Column::OwnerId,
                    ])
                    .value(
                        owner_quota::Column::LiveTokens,
                        Expr::cust("owner_quotas.live_tokens + excluded.live_tokens"),
                    )
                    .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(())
    }
}
