//! The audit-trail listing.

use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{Store, convert::event_from_model, entities::token_event};
use crate::{
    domain::{page::EventCursor, privilege::Scope, token::Event},
    error::Result,
};

/// A ListEvents query, already authorised and validated.
#[derive(Debug, Clone)]
pub struct EventQuery {
    pub scope: Scope,
    pub token_id: Option<String>,
    pub account_id: Option<String>,
    pub after: Option<EventCursor>,
    pub limit: u64,
}

impl Store {
    /// One page of events, newest first.
    pub async fn list_events(&self, q: &EventQuery) -> Result<Vec<Event>> {
        use token_event::Column as C;
        let mut cond = Condition::all();
        match &q.scope {
            Scope::Everything => {}
            Scope::Account(a) => cond = cond.add(C::AccountId.eq(a.as_str())),
            Scope::Owner {
                account_id,
                owner_id,
            } => {
                cond = cond
                    .add(C::AccountId.eq(account_id.as_str()))
                    .add(C::OwnerId.eq(owner_id.as_str()))
            }
        }
        if let Some(t) = &q.token_id {
            cond = cond.add(C::TokenId.eq(t.as_str()));
        }
        if let Some(a) = &q.account_id {
            cond = cond.add(C::AccountId.eq(a.as_str()));
        }
        if let Some(after) = q.after {
            cond = cond.add(C::Id.lt(after.id));
        }
        self.bounded(async {
            let models = token_event::Entity::find()
                .filter(cond)
                .order_by_desc(C::Id)
                .limit(q.limit)
                .all(&self.db)
                .await?;
            models.into_iter().map(event_from_model).collect()
        })
        .await
    }
}
