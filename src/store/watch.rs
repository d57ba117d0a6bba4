//! What WatchEvents reads: events after an id, oldest first, and the signal
//! that new ones have committed.
//!
//! Event ids are delivered as a cursor, so they must become visible in id
//! order: a reader that has seen id N must never later find a smaller id
//! commit. SQLite serialises writers in-process (`write_lock`), which gives
//! that order. On PostgreSQL, ids come from a sequence and concurrent
//! transactions could commit out of order, so every transaction that records
//! events takes one transaction-scoped advisory lock (`order_events`) just
//! before its event insert and holds it to its commit (the tail of the
//! transaction only: its token write and checks run before it). It is taken
//! after every row lock the transaction needs, so its holders never wait for
//! a row, and it cannot be part of a deadlock.
//!
//! The signal is a counter bumped after each local commit and, on
//! PostgreSQL, on each change notification from any replica (the change feed
//! replicas already follow). It carries no events: watchers read them from
//! the table, so no per-event memory is held for anyone.

use std::{sync::Arc, time::Duration};

use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, Statement,
};

use super::{Store, convert::event_from_model, entities::token_event};
use crate::{
    domain::{EventKind, token::Event},
    error::Result,
};

/// The advisory lock key that orders event commits on PostgreSQL (`locks`).
const EVENT_ORDER_LOCK: i64 = super::locks::EVENT_ORDER;

/// Takes the event-order lock inside a transaction (PostgreSQL; SQLite's
/// writers are already serialised).
pub(super) async fn order_events(conn: &impl ConnectionTrait) -> Result<()> {
    if conn.get_database_backend() == DbBackend::Postgres {
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [EVENT_ORDER_LOCK.into()],
        ))
        .await?;
    }
    Ok(())
}

/// Which events a watcher wants.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// One account's events; `None`: every account.
    pub account_id: Option<String>,
    /// These kinds only; empty: every kind.
    pub kinds: Vec<EventKind>,
}

impl Store {
    /// Events with ids after `after` that pass `filter`, oldest first.
    pub async fn events_after(
        &self,
        after: i64,
        filter: &EventFilter,
        limit: u64,
    ) -> Result<Vec<Event>> {
        use token_event::Column as C;
        let mut select = token_event::Entity::find().filter(C::Id.gt(after));
        if let Some(a) = &filter.account_id {
            select = select.filter(C::AccountId.eq(a.as_str()));
        }
        if !filter.kinds.is_empty() {
            select = select.filter(C::Kind.is_in(filter.kinds.iter().map(|k| k.as_str())));
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

    /// The highest event id (0 when there are none).
    pub async fn last_event_id(&self) -> Result<i64> {
        #[derive(FromQueryResult)]
        struct Max {
            id: Option<i64>,
        }
        self.bounded(async {
            let row = token_event::Entity::find()
                .select_only()
                .column_as(token_event::Column::Id.max(), "id")
                .into_model::<Max>()
                .one(&self.db)
                .await?;
            Ok(row.and_then(|r| r.id).unwrap_or(0))
        })
        .await
    }

    /// A receiver that changes whenever events may have committed.
    pub fn event_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.event_signal.subscribe()
    }

    /// Bumps the signal: called after each local commit that recorded events.
    pub(super) fn events_committed(&self) {
        self.event_signal.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// PostgreSQL: follows the change feed (every replica's commits), bumping
    /// the signal on each notification, reconnecting after failures, until
    /// the store is dropped. Started once, by the first watcher.
    pub fn follow_remote_events(self: &Arc<Self>) {
        if !self.is_shared() {
            return;
        }
        if self
            .event_follower
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(s) = store.upgrade() else { return };
                let feed = s.listen().await;
                drop(s);
                match feed {
                    Ok(mut feed) => loop {
                        let next = feed.next().await;
                        let Some(s) = store.upgrade() else { return };
                        match next {
                            Ok(_) => s.events_committed(),
                            Err(e) => {
                                tracing::warn!(error = %e, "event watch feed lost; reconnecting");
                                s.events_committed();
                                break;
                            }
                        }
                    },
                    Err(e) => tracing::warn!(error = %e, "event watch feed cannot connect"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
}
