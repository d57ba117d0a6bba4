//! Bulk import: tokens made elsewhere (a benchmark's seed, a data import)
//! written in batches, each batch in one transaction with an `issued` audit
//! event per token and its owners' live-token counts, like Issue, but without
//! argon2 work per request and without the per-owner limit.
//!
//! No change-log rows are written: new ids need no cache invalidation,
//! except that a replica which looked one up in the last `unknown_ttl`
//! keeps answering "unknown" for at most that long.

use std::collections::BTreeMap;

use sea_orm::{
    ActiveValue::Set,
    EntityTrait, TransactionTrait,
    sea_query::{Expr, ExprTrait, OnConflict},
};

use super::{
    Store,
    convert::token_to_active,
    entities::{owner_quota, token, token_event},
};
use crate::{
    domain::{Token, TokenState, token::Actor},
    error::Result,
};

/// Rows per INSERT statement: well under SQLite's bound-parameter limit.
const ROWS_PER_STATEMENT: usize = 500;

impl Store {
    /// Inserts `tokens` (new ids) in one transaction, with their audit events.
    pub async fn import_tokens(&self, tokens: &[Token], actor: &Actor, detail: &str) -> Result<()> {
        if tokens.is_empty() {
            return Ok(());
        }
        let mut live: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for t in tokens.iter().filter(|t| t.state != TokenState::Revoked) {
            *live
                .entry((t.account_id.as_str(), t.owner_id.as_str()))
                .or_default() += 1;
        }
        let rows = tokens
            .iter()
            .map(token_to_active)
            .collect::<Result<Vec<_>>>()?;
        let events: Vec<token_event::ActiveModel> = tokens
            .iter()
            .map(|t| token_event::ActiveModel {
                token_id: Set(t.id.to_string()),
                account_id: Set(t.account_id.as_str().to_owned()),
                owner_id: Set(t.owner_id.as_str().to_owned()),
                kind: Set(crate::domain::EventKind::Issued.as_str().to_owned()),
                actor_token_id: Set(actor.recorded_id()),
                actor_owner_id: Set(actor.owner_id().to_owned()),
                at: Set(t.created_at),
                detail: Set(detail.to_owned()),
                ..Default::default()
            })
            .collect();
        let _serialised = self.write_guard().await;
        let txn = self.db.begin().await?;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            token::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&txn)
                .await?;
        }
        let quotas: Vec<owner_quota::ActiveModel> = live
            .into_iter()
            .map(|((account, owner), n)| owner_quota::ActiveModel {
                account_id: Set(account.to_owned()),
                owner_id: Set(owner.to_owned()),
                live_tokens: Set(n),
            })
            .collect();
        for chunk in quotas.chunks(ROWS_PER_STATEMENT) {
            owner_quota::Entity::insert_many(chunk.to_vec())
                .on_conflict(
                    OnConflict::columns([
                        owner_quota::Column::AccountId,
                        owner_quota::Column::OwnerId,
                    ])
                    .value(
                        owner_quota::Column::LiveTokens,
                        Expr::col((owner_quota::Entity, owner_quota::Column::LiveTokens)).add(
                            Expr::col((
                                sea_orm::sea_query::Alias::new("excluded"),
                                owner_quota::Column::LiveTokens,
                            )),
                        ),
                    )
                    .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
        }
        // Last, after every row lock this transaction takes: the event-order
        // lock's holders never wait for a row (see `store::watch`).
        super::watch::order_events(&txn).await?;
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            token_event::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        self.events_committed();
        Ok(())
    }
}
