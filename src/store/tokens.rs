//! Token queries: lookups and the transactional write paths (each commits the
//! change, its audit event and the owner's live-token count together).

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QuerySelect,
    TransactionTrait,
    sea_query::{CaseStatement, Expr, ExprTrait, OnConflict},
};

use super::{
    Store,
    convert::{event_to_active, token_from_model, token_to_active},
    entities::{owner_quota, token, token_event},
};
use crate::{
    domain::{NewEvent, Token, TokenId},
    error::{Error, Result},
};

/// The outcome of a read-modify-write on one token, decided by domain rules
/// inside the transaction.
pub enum Change {
    /// Nothing to write (an idempotent repeat); the current record is returned.
    Unchanged(Token),
    /// Write `token`, record `event`, and adjust the owner's live-token count.
    Changed {
        token: Token,
        event: NewEvent,
        live_delta: i64,
    },
}

/// What `Store::update_token` did.
#[derive(Debug)]
pub enum Updated {
    /// `decide` found nothing to write: the current record.
    Unchanged(Token),
    /// The change committed with its audit event: the new record.
    Committed(Token),
}

impl Updated {
    /// The token as it now is, written or not.
    pub fn token(&self) -> &Token {
        match self {
            Self::Unchanged(t) | Self::Committed(t) => t,
        }
    }

    pub fn into_token(self) -> Token {
        match self {
            Self::Unchanged(t) | Self::Committed(t) => t,
        }
    }

    pub fn committed(&self) -> bool {
        matches!(self, Self::Committed(_))
    }
}

impl Store {
    /// One token by id.
    pub async fn find_token(&self, id: TokenId) -> Result<Option<Token>> {
        self.bounded(async {
            let model = token::Entity::find_by_id(id.to_string())
                .one(&self.db)
                .await?;
            model.map(token_from_model).transpose()
        })
        .await
    }

    /// Inserts a new token with its audit event, enforcing the per-owner limit
    /// on live tokens atomically.
    pub async fn insert_token(
        &self,
        token: &Token,
        event: &NewEvent,
        per_owner_limit: u32,
    ) -> Result<()> {
        self.bounded(async {
            let _serialised = self.write_guard().await;
            let txn = self.db.begin().await?;
            owner_quota::Entity::insert(owner_quota::ActiveModel {
                account_id: Set(token.account_id.as_str().to_owned()),
                owner_id: Set(token.owner_id.as_str().to_owned()),
                live_tokens: Set(0),
            })
            .on_conflict(OnConflict::columns([owner_quota::Column::AccountId, owner_quota::Column::OwnerId]).do_nothing().to_owned())
            .exec_without_returning(&txn)
            .await?;
            let reserved = owner_quota::Entity::update_many()
                .col_expr(owner_quota::Column::LiveTokens, Expr::col(owner_quota::Column::LiveTokens).add(1))
                .filter(owner_quota::Column::AccountId.eq(token.account_id.as_str()))
                .filter(owner_quota::Column::OwnerId.eq(token.owner_id.as_str()))
                .filter(owner_quota::Column::LiveTokens.lt(i64::from(per_owner_limit)))
                .exec(&txn)
                .await?;
            if reserved.rows_affected == 0 {
                return Err(Error::ResourceExhausted(format!(
                    "owner {} already has the maximum of {per_owner_limit} live tokens; revoke one first",
                    token.owner_id
                )));
            }
            token::Entity::insert(token_to_active(token)?).exec_without_returning(&txn).await?;
            super::watch::order_events(&txn).await?;
            insert_event(&txn, token, event).await?;
            super::changes::record(&txn, &self.instance, token.id).await?;
            txn.commit().await?;
            self.events_committed();
            Ok(())
        })
        .await
    }

    /// Read-modify-write of one token: `decide` sees the locked current record
    /// and applies the domain rules; its change commits with its audit event.
    /// Returns `NotFound` when there is no such token.
    pub async fn update_token<F>(&self, id: TokenId, decide: F) -> Result<Updated>
    where
        F: FnOnce(Token) -> Result<Change> + Send,
    {
        self.bounded(async {
            let _serialised = self.write_guard().await;
            let txn = self.db.begin().await?;
            let mut select = token::Entity::find_by_id(id.to_string());
            if self.backend() == DbBackend::Postgres {
                select = select.lock_exclusive();
            }
            let current = select
                .one(&txn)
                .await?
                .ok_or_else(|| Error::token_not_found(id))?;
            let old_name = current.name.clone();
            match decide(token_from_model(current)?)? {
                Change::Unchanged(token) => {
                    txn.rollback().await?;
                    Ok(Updated::Unchanged(token))
                }
                Change::Changed {
                    token,
                    event,
                    live_delta,
                } => {
                    token::Entity::update(token_to_active(&token)?)
                        .exec(&txn)
                        .await?;
                    if live_delta != 0 {
                        owner_quota::Entity::update_many()
                            .col_expr(
                                owner_quota::Column::LiveTokens,
                                Expr::col(owner_quota::Column::LiveTokens).add(live_delta),
                            )
                            .filter(owner_quota::Column::AccountId.eq(token.account_id.as_str()))
                            .filter(owner_quota::Column::OwnerId.eq(token.owner_id.as_str()))
                            .exec(&txn)
                            .await?;
                    }
                    super::watch::order_events(&txn).await?;
                    insert_event(&txn, &token, &event).await?;
                    super::changes::record(&txn, &self.instance, token.id).await?;
                    txn.commit().await?;
                    self.events_committed();
                    if token.name != old_name {
                        self.name_index_grew();
                    }
                    Ok(Updated::Committed(token))
                }
            }
        })
        .await
    }

    /// Writes a batch of last-used times in one statement; a time never moves
    /// backwards (several replicas may flush the same token).
    pub async fn record_last_used(&self, batch: &[(TokenId, DateTime<Utc>)]) -> Result<()> {
        use token::Column as C;
        if batch.is_empty() {
            return Ok(());
        }
        let mut case = CaseStatement::new();
        for (id, at) in batch {
            let newer = Condition::any()
                .add(C::LastUsedAt.is_null())
                .add(C::LastUsedAt.lt(*at));
            case = case.case(
                Condition::all().add(C::Id.eq(id.to_string())).add(newer),
                Expr::val(*at),
            );
        }
        case = case.finally(Expr::col(C::LastUsedAt));
        let ids: Vec<String> = batch.iter().map(|(id, _)| id.to_string()).collect();
        self.bounded(async {
            let _serialised = self.write_guard().await;
            token::Entity::update_many()
                .col_expr(C::LastUsedAt, case.into())
                .filter(C::Id.is_in(ids))
                .exec(&self.db)
                .await?;
            Ok(())
        })
        .await
    }
}

async fn insert_event(conn: &impl ConnectionTrait, token: &Token, event: &NewEvent) -> Result<()> {
    token_event::Entity::insert(event_to_active(token, event))
        .exec_without_returning(conn)
        .await?;
    Ok(())
}
