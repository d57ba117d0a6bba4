//! The hygiene sweeper's queries (`manage::sweeper`): where expiry notices
//! come due, settling them exactly once, and auto-disabling unused tokens.
//!
//! **One sweeper at a time.** Every batch is one transaction that first
//! takes the `locks::SWEEP` advisory lock (PostgreSQL; SQLite has one
//! process): while one replica's batch holds it, the others' batches wait
//! their turn, and a batch re-reads what it acts on once it holds the lock,
//! so work another replica just did is found done. A transaction-scoped
//! lock rather than a lease row: it needs no expiry to tune and nothing to
//! clean up, since a replica that dies mid-batch releases it with its
//! connection, its batch rolls back whole, and the next pass (of any
//! replica) finds the same work still due, because nothing about progress
//! is kept in memory.
//!
//! **Exactly once.** A notice is a `token_notices` row keyed by (token,
//! kind, horizon, expiry), inserted with `ON CONFLICT DO NOTHING`; its event
//! is written by the same transaction only when that insert took. Even two
//! sweepers that somehow both ran could not both record one notice.
//!
//! **Indexed reads.** Notices: ranges of `idx_tokens_sweep_expiry` (tokens
//! whose horizon start passed since the last pass) and of
//! `idx_tokens_sweep_written` (tokens written since then: new, or whose
//! expiry moved). Unused tokens: a range of `idx_tokens_sweep_unused`, on
//! `COALESCE(last_used_at, created_at)` of active tokens. Each pass reads
//! what came due since the last one, not the table. The expressions and the
//! partial-index predicates are spelled here exactly as in migration 000008,
//! so both planners match them.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    FromQueryResult, QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
    sea_query::{Expr, ExprTrait, OnConflict, Query},
};

use super::{
    Store,
    convert::{event_to_active, token_from_model, token_to_active},
    entities::{account_policy, sweep_state, token, token_event, token_notice},
};
use crate::{
    domain::{EventKind, NewEvent, Token, TokenId, hygiene::DueNotice, token::Actor},
    error::Result,
};

/// The `sweep_state` row of the notice watermark.
const NOTICES: &str = "notices";
/// Spelled as in `idx_tokens_sweep_unused`.
const UNUSED_SINCE: &str = "COALESCE(last_used_at, created_at)";
const ACTIVE: &str = "state = 'active'";

/// A token a notice may be due for, as the candidate reads find it.
#[derive(Debug, Clone, FromQueryResult)]
pub struct NoticeToken {
    pub id: String,
    pub account_id: String,
    pub owner_id: String,
    pub state: String,
    pub expires_at: DateTime<Utc>,
    /// The value of the range's ordering column (the keyset).
    pub key: DateTime<Utc>,
}

/// Where notices may have come due.
#[derive(Debug, Clone, Copy)]
pub enum NoticeRange {
    /// Tokens expiring in `(after, until]`.
    Expiring {
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    },
    /// Tokens written after `since` that expire at or before `until`.
    Written {
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    },
}

/// Which accounts an unused-token rule covers.
#[derive(Debug, Clone, Copy)]
pub enum RuleAccounts {
    /// Accounts without a policy of their own (the server's default).
    Default,
    /// Accounts whose own policy says `disable_unused_after` = these seconds.
    Custom(i64),
}

/// What one notice batch did: events recorded, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NoticesRecorded {
    pub expiring_soon: u64,
    pub expired: u64,
}

/// What one auto-disable batch did.
#[derive(Debug, Default)]
pub struct DisableBatch {
    /// The tokens disabled (committed with their events).
    pub disabled: Vec<Token>,
    /// Rows the batch looked at (fewer than the limit: the range is done).
    pub scanned: u64,
    /// Where the next batch starts.
    pub next: Option<(DateTime<Utc>, String)>,
}

/// The distinct hygiene rules in the account policies: notice lists (JSON
/// seconds) and `disable_unused_after` values.
#[derive(Debug, Default)]
pub struct PolicyRules {
    pub notice_lists: Vec<Vec<u64>>,
    pub disable_after_secs: Vec<i64>,
}

/// Takes the sweep lock in `txn`, waiting while another replica's batch
/// holds it (PostgreSQL; SQLite has one process). Waiting, not skipping:
/// with several replicas each pass's batches would otherwise keep meeting
/// another pass's and yield, and under load no batch of the later stages
/// ever ran. Batches are short, so replicas take turns batch by batch.
async fn sweep_lock(txn: &DatabaseTransaction) -> Result<()> {
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [super::locks::SWEEP.into()],
        ))
        .await?;
    }
    Ok(())
}

impl Store {
    /// The distinct notice lists and unused-token rules of the accounts that
    /// have their own policy.
    pub async fn policy_rules(&self) -> Result<PolicyRules> {
        use account_policy::Column as C;
        self.bounded(async {
            let rows: Vec<(String, Option<i64>)> = account_policy::Entity::find()
                .select_only()
                .column(C::ExpiryNoticeBeforeSecs)
                .column(C::DisableUnusedAfterSecs)
                .distinct()
                .into_tuple()
                .all(&self.db)
                .await?;
            let mut rules = PolicyRules::default();
            for (notices, disable) in rows {
                if let Ok(list) = serde_json::from_str::<Vec<u64>>(&notices)
                    && !rules.notice_lists.contains(&list)
                {
                    rules.notice_lists.push(list);
                }
                if let Some(d) = disable.filter(|d| *d > 0)
                    && !rules.disable_after_secs.contains(&d)
                {
                    rules.disable_after_secs.push(d);
                }
            }
            Ok(rules)
        })
        .await
    }

    /// The notice watermark: every horizon start up to it has been swept.
    pub async fn sweep_watermark(&self) -> Result<Option<DateTime<Utc>>> {
        self.bounded(async {
            Ok(sweep_state::Entity::find_by_id(NOTICES.to_owned())
                .one(&self.db)
                .await?
                .map(|m| m.at))
        })
        .await
    }

    /// Moves the watermark forward to `to` (never back).
    pub async fn advance_sweep_watermark(&self, to: DateTime<Utc>) -> Result<()> {
        use sweep_state::Column as C;
        self.bounded(async {
            let _serialised = self.write_guard().await;
            let txn = self.db.begin().await?;
            sweep_lock(&txn).await?;
            let current = sweep_state::Entity::find_by_id(NOTICES.to_owned())
                .one(&txn)
                .await?;
            if current.as_ref().is_none_or(|c| c.at < to) {
                sweep_state::Entity::insert(sweep_state::ActiveModel {
                    name: Set(NOTICES.to_owned()),
                    at: Set(to),
                })
                .on_conflict(OnConflict::column(C::Name).update_column(C::At).to_owned())
                .exec_without_returning(&txn)
                .await?;
            }
            txn.commit().await?;
            Ok(())
        })
        .await
    }

    /// One page of `range`'s unrevoked tokens, in the range's index order,
    /// after the keyset `after`.
    pub async fn notice_candidates(
        &self,
        range: NoticeRange,
        after: Option<(DateTime<Utc>, String)>,
        limit: u64,
    ) -> Result<Vec<NoticeToken>> {
        use token::Column as C;
        let (key, cond) = match range {
            NoticeRange::Expiring { after, until } => (
                C::ExpiresAt,
                Condition::all()
                    .add(C::ExpiresAt.gt(after))
                    .add(C::ExpiresAt.lte(until)),
            ),
            NoticeRange::Written { since, until } => (
                C::UpdatedAt,
                Condition::all()
                    .add(Expr::cust("expires_at IS NOT NULL"))
                    .add(C::UpdatedAt.gt(since))
                    .add(C::ExpiresAt.lte(until)),
            ),
        };
        let mut cond = cond.add(C::State.ne("revoked"));
        if let Some((k, id)) = after {
            cond = cond.add(
                Condition::any()
                    .add(Expr::col(key).gt(k))
                    .add(Condition::all().add(Expr::col(key).eq(k)).add(C::Id.gt(id))),
            );
        }
        self.bounded(async {
            Ok(token::Entity::find()
                .select_only()
                .columns([C::Id, C::AccountId, C::OwnerId, C::State, C::ExpiresAt])
                .column_as(key, "key")
                .filter(cond)
                .order_by_asc(key)
                .order_by_asc(C::Id)
                .limit(limit)
                .into_model::<NoticeToken>()
                .all(&self.db)
                .await?)
        })
        .await
    }

    /// Settles the notices `due` says each token of `batch` is due, in one
    /// transaction: each notice's row is inserted unless it exists, and its
    /// event (actor: the service) is recorded only when the insert took and
    /// the notice is the one to emit. `due` sees each token as it is now
    /// (re-read here, so a token revoked or given a new expiry since the
    /// candidate read is judged on its current record).
    pub async fn record_notices<F>(
        &self,
        batch: &[NoticeToken],
        now: DateTime<Utc>,
        mut due: F,
    ) -> Result<NoticesRecorded>
    where
        F: FnMut(&NoticeToken) -> Vec<DueNotice> + Send,
    {
        use token_notice::Column as N;
        if batch.is_empty() {
            return Ok(NoticesRecorded::default());
        }
        let ids: Vec<String> = batch.iter().map(|t| t.id.clone()).collect();
        self.bounded(async {
            let _serialised = self.write_guard().await;
            let txn = self.db.begin().await?;
            sweep_lock(&txn).await?;
            // The current records (locked against a concurrent Update of
            // the expiry until this batch commits).
            let mut select = token::Entity::find()
                .select_only()
                .columns([
                    token::Column::Id,
                    token::Column::AccountId,
                    token::Column::OwnerId,
                    token::Column::State,
                    token::Column::ExpiresAt,
                ])
                .column_as(token::Column::ExpiresAt, "key")
                .filter(token::Column::Id.is_in(ids.clone()))
                .filter(token::Column::ExpiresAt.is_not_null());
            if self.backend() == DbBackend::Postgres {
                select = select.lock_shared();
            }
            let current = select.into_model::<NoticeToken>().all(&txn).await?;
            let settled: HashSet<(String, String, i64, DateTime<Utc>)> =
                token_notice::Entity::find()
                    .filter(N::TokenId.is_in(ids))
                    .all(&txn)
                    .await?
                    .into_iter()
                    .map(|n| (n.token_id, n.kind, n.horizon_secs, n.expires_at))
                    .collect();
            let mut rows = Vec::new();
            let mut events = Vec::new();
            for t in current.iter().filter(|t| t.state != "revoked") {
                for notice in due(t) {
                    let key = (
                        t.id.clone(),
                        notice.kind.as_str().to_owned(),
                        notice.horizon_secs,
                        t.expires_at,
                    );
                    if settled.contains(&key) {
                        continue;
                    }
                    rows.push(token_notice::ActiveModel {
                        token_id: Set(key.0),
                        kind: Set(key.1),
                        horizon_secs: Set(key.2),
                        expires_at: Set(key.3),
                        emitted: Set(notice.emit),
                        at: Set(now),
                    });
                    if notice.emit {
                        events.push((t, notice));
                    }
                }
            }
            let mut recorded = NoticesRecorded::default();
            if rows.is_empty() {
                txn.rollback().await?;
                return Ok(recorded);
            }
            // One statement for the batch. Under the sweep lock nobody else
            // inserts notices, so every row takes; should one not (two
            // sweepers despite the lock), the key has refused it, and the
            // batch is given up whole rather than guessing which one it was.
            let expected = rows.len() as u64;
            let took = token_notice::Entity::insert_many(rows)
                .on_conflict(
                    OnConflict::columns([N::TokenId, N::Kind, N::HorizonSecs, N::ExpiresAt])
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
            if took != expected {
                txn.rollback().await?;
                return Err(crate::error::Error::Internal(format!(
                    "{} of {expected} notices were settled concurrently; the batch is retried next pass",
                    expected - took
                )));
            }
            if !events.is_empty() {
                let mut models = Vec::with_capacity(events.len());
                for (t, notice) in events {
                    match notice.kind {
                        EventKind::Expired => recorded.expired += 1,
                        _ => recorded.expiring_soon += 1,
                    }
                    models.push(token_event::ActiveModel {
                        token_id: Set(t.id.clone()),
                        account_id: Set(t.account_id.clone()),
                        owner_id: Set(t.owner_id.clone()),
                        kind: Set(notice.kind.as_str().to_owned()),
                        actor_token_id: Set(Actor::Service.recorded_id()),
                        actor_owner_id: Set(Actor::Service.owner_id().to_owned()),
                        at: Set(now),
                        detail: Set(notice.detail),
                        ..Default::default()
                    });
                }
                super::watch::order_events(&txn).await?;
                token_event::Entity::insert_many(models)
                    .exec_without_returning(&txn)
                    .await?;
            }
            txn.commit().await?;
            if recorded != NoticesRecorded::default() {
                self.events_committed();
            }
            Ok(recorded)
        })
        .await
    }

    /// One batch of auto-disables under one rule, in one transaction: the
    /// active tokens of `accounts` last used (never used: created) before
    /// `cutoff`, after the keyset `after`, locked and re-checked under the
    /// sweep lock; `decide` turns each into its disabled record and event
    /// (or skips it), and each change goes through the change log (and
    /// NOTIFY) like every mutation.
    pub async fn auto_disable_batch<F>(
        &self,
        accounts: RuleAccounts,
        cutoff: DateTime<Utc>,
        after: Option<(DateTime<Utc>, String)>,
        limit: u64,
        mut decide: F,
    ) -> Result<DisableBatch>
    where
        F: FnMut(Token) -> Option<(Token, NewEvent)> + Send,
    {
        use token::Column as C;
        let policies = || {
            Query::select()
                .column(account_policy::Column::AccountId)
                .from(account_policy::Entity)
                .to_owned()
        };
        let mut cond = Condition::all()
            .add(Expr::cust(ACTIVE))
            .add(Expr::cust(UNUSED_SINCE).lt(cutoff));
        cond = match accounts {
            RuleAccounts::Default => cond.add(C::AccountId.not_in_subquery(policies())),
            RuleAccounts::Custom(secs) => cond.add(
                C::AccountId.in_subquery(
                    policies()
                        .and_where(account_policy::Column::DisableUnusedAfterSecs.eq(secs))
                        .to_owned(),
                ),
            ),
        };
        if let Some((k, id)) = after {
            cond = cond.add(
                Condition::any().add(Expr::cust(UNUSED_SINCE).gt(k)).add(
                    Condition::all()
                        .add(Expr::cust(UNUSED_SINCE).eq(k))
                        .add(C::Id.gt(id)),
                ),
            );
        }
        self.bounded(async {
            let _serialised = self.write_guard().await;
            let txn = self.db.begin().await?;
            sweep_lock(&txn).await?;
            let mut select = token::Entity::find()
                .filter(cond)
                .order_by_asc(Expr::cust(UNUSED_SINCE))
                .order_by_asc(C::Id)
                .limit(limit);
            if self.backend() == DbBackend::Postgres {
                select = select.lock_exclusive();
            }
            let rows = select.all(&txn).await?;
            let mut batch = DisableBatch {
                scanned: rows.len() as u64,
                ..Default::default()
            };
            let mut changes = Vec::new();
            for m in rows {
                let id = m.id.clone();
                let since = m.last_used_at.unwrap_or(m.created_at);
                batch.next = Some((since, id));
                if let Some((t, event)) = decide(token_from_model(m)?) {
                    token::Entity::update(token_to_active(&t)?)
                        .exec(&txn)
                        .await?;
                    changes.push((t, event));
                }
            }
            if !changes.is_empty() {
                super::watch::order_events(&txn).await?;
                for (t, event) in &changes {
                    token_event::Entity::insert(event_to_active(t, event))
                        .exec_without_returning(&txn)
                        .await?;
                    super::changes::record(&txn, &self.instance, t.id).await?;
                }
            }
            txn.commit().await?;
            if !changes.is_empty() {
                self.events_committed();
            }
            batch.disabled = changes.into_iter().map(|(t, _)| t).collect();
            Ok(batch)
        })
        .await
    }

    /// The notices settled for `token`, as (kind, horizon seconds, expiry,
    /// emitted): for tests and diagnostics.
    pub async fn token_notices(
        &self,
        token: TokenId,
    ) -> Result<Vec<(String, i64, DateTime<Utc>, bool)>> {
        self.bounded(async {
            let rows = token_notice::Entity::find()
                .filter(token_notice::Column::TokenId.eq(token.to_string()))
                .all(&self.db)
                .await?;
            Ok(rows
                .into_iter()
                .map(|n| (n.kind, n.horizon_secs, n.expires_at, n.emitted))
                .collect())
        })
        .await
    }
}

/// Accounts of `batch` (for the caller to look their policies up once).
pub fn accounts_of(batch: &[NoticeToken]) -> Vec<String> {
    let mut seen: HashMap<&str, ()> = HashMap::new();
    batch
        .iter()
        .filter(|t| seen.insert(&t.account_id, ()).is_none())
        .map(|t| t.account_id.clone())
        .collect()
}
