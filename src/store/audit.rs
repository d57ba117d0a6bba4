//! Audit-trail maintenance: retention pruning and export.
//!
//! Pruning deletes in small batches, each its own short transaction, so a
//! write waits at most for one batch. On PostgreSQL every batch first tries an
//! advisory lock held by its transaction: while one replica prunes, the
//! others' attempts fail at once and they skip, so one replica prunes at a
//! time and none waits.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement, TransactionTrait,
};

use super::{Store, convert::event_from_model, entities::token_event};
use crate::{domain::token::Event, error::Result};

/// The advisory lock pruning replicas take turns on (`locks`).
const PRUNE_LOCK: i64 = super::locks::PRUNE;

/// A range of the audit trail, for `tokend events export`.
#[derive(Debug, Clone, Default)]
pub struct EventRange {
    /// Events at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Events before this time.
    pub to: Option<DateTime<Utc>>,
    pub account_id: Option<String>,
}

impl Store {
    /// Deletes at most `batch` of the oldest events recorded before `cutoff`,
    /// in one transaction. `None`: another replica is pruning (PostgreSQL).
    pub async fn prune_events(&self, cutoff: DateTime<Utc>, batch: u64) -> Result<Option<u64>> {
        use token_event::Column as C;
        self.bounded(async {
            let _serialised = self.write_guard().await;
            let txn = self.db.begin().await?;
            if self.backend() == DbBackend::Postgres {
                let row = txn
                    .query_one_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "SELECT pg_try_advisory_xact_lock($1)",
                        [PRUNE_LOCK.into()],
                    ))
                    .await?;
                let locked = row
                    .map(|r| r.try_get_by_index::<bool>(0))
                    .transpose()?
                    .unwrap_or(false);
                if !locked {
                    txn.rollback().await?;
                    return Ok(None);
                }
            }
            let ids: Vec<i64> = token_event::Entity::find()
                .select_only()
                .column(C::Id)
                .filter(C::At.lt(cutoff))
                .order_by_asc(C::At)
                .order_by_asc(C::Id)
                .limit(batch)
                .into_tuple()
                .all(&txn)
                .await?;
            let deleted = if ids.is_empty() {
                0
            } else {
                token_event::Entity::delete_many()
                    .filter(C::Id.is_in(ids))
                    .exec(&txn)
                    .await?
                    .rows_affected
            };
            txn.commit().await?;
            Ok(Some(deleted))
        })
        .await
    }

    /// At most `limit` events of `range` with ids above `after_id`, oldest
    /// (lowest id) first.
    pub async fn export_events(
        &self,
        range: &EventRange,
        after_id: i64,
        limit: u64,
    ) -> Result<Vec<Event>> {
        use token_event::Column as C;
        let mut select = token_event::Entity::find().filter(C::Id.gt(after_id));
        if let Some(from) = range.from {
            select = select.filter(C::At.gte(from));
        }
        if let Some(to) = range.to {
            select = select.filter(C::At.lt(to));
        }
        if let Some(account) = &range.account_id {
            select = select.filter(C::AccountId.eq(account.as_str()));
        }
        self.bounded(async {
            let models = select
                .order_by_asc(C::Id)
                .limit(limit)
                .all(&self.db)
                .await?;
            models.into_iter().map(event_from_model).collect()
        })
        .await
    }
}
