//! Account policies: the read, and the read-modify-write that commits a
//! change together with its audit event.

use std::time::Duration;

use sea_orm::{
    ActiveValue::Set, DbBackend, EntityTrait, QuerySelect, TransactionTrait, sea_query::OnConflict,
};

use super::{
    Store,
    entities::{account_policy, token_event},
};
use crate::{
    domain::{
        NewEvent,
        policy::{AccountPolicy, Cidr, StoredPolicy},
    },
    error::{Error, Result},
};

fn corrupt(account: &str) -> Error {
    Error::Internal(format!("stored policy of account {account} is unreadable"))
}

fn secs(d: Option<Duration>) -> Option<i64> {
    d.map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn from_secs(s: Option<i64>) -> Option<Duration> {
    s.map(|s| Duration::from_secs(s.max(0) as u64))
}

fn from_model(m: account_policy::Model) -> Result<StoredPolicy> {
    let cidrs: Vec<String> =
        serde_json::from_str(&m.default_allowed_cidrs).map_err(|_| corrupt(&m.account_id))?;
    let cidrs =
        Cidr::parse_list("default_allowed_cidrs", &cidrs).map_err(|_| corrupt(&m.account_id))?;
    let notices: Vec<u64> =
        serde_json::from_str(&m.expiry_notice_before_secs).map_err(|_| corrupt(&m.account_id))?;
    Ok(StoredPolicy {
        policy: AccountPolicy {
            max_lifetime: from_secs(m.max_lifetime_secs),
            require_expiry: m.require_expiry,
            max_tokens_per_owner: m.max_tokens_per_owner.map(|n| n.max(0) as u32),
            disable_unused_after: from_secs(m.disable_unused_after_secs),
            default_allowed_cidrs: cidrs,
            expiry_notice_before: notices.into_iter().map(Duration::from_secs).collect(),
        },
        account_id: m.account_id,
        updated_at: m.updated_at,
        updated_by: m.updated_by,
    })
}

fn to_active(s: &StoredPolicy) -> Result<account_policy::ActiveModel> {
    let p = &s.policy;
    let cidrs: Vec<String> = p
        .default_allowed_cidrs
        .iter()
        .map(|c| c.to_string())
        .collect();
    let notices: Vec<u64> = p.expiry_notice_before.iter().map(|d| d.as_secs()).collect();
    let json = |e: serde_json::Error| Error::Internal(format!("encoding a policy: {e}"));
    Ok(account_policy::ActiveModel {
        account_id: Set(s.account_id.clone()),
        max_lifetime_secs: Set(secs(p.max_lifetime)),
        require_expiry: Set(p.require_expiry),
        max_tokens_per_owner: Set(p
            .max_tokens_per_owner
            .map(|n| i32::try_from(n).unwrap_or(i32::MAX))),
        disable_unused_after_secs: Set(secs(p.disable_unused_after)),
        default_allowed_cidrs: Set(serde_json::to_string(&cidrs).map_err(json)?),
        expiry_notice_before_secs: Set(serde_json::to_string(&notices).map_err(json)?),
        updated_at: Set(s.updated_at),
        updated_by: Set(s.updated_by.clone()),
    })
}

impl Store {
    /// The account's own policy, if it has one.
    pub async fn find_policy(&self, account_id: &str) -> Result<Option<StoredPolicy>> {
        self.bounded(async {
            account_policy::Entity::find_by_id(account_id.to_owned())
                .one(&self.db)
                .await?
                .map(from_model)
                .transpose()
        })
        .await
    }

    /// Read-modify-write of an account's policy: `decide` sees the current
    /// one (locked on PostgreSQL) and returns the new one with its audit
    /// event, or `None` when nothing changes; both commit together.
    pub async fn update_policy<F>(
        &self,
        account_id: &str,
        decide: F,
    ) -> Result<Option<StoredPolicy>>
    where
        F: FnOnce(Option<StoredPolicy>) -> Result<Option<(StoredPolicy, NewEvent)>> + Send,
    {
        self.bounded(async {
            let _serialised = self.write_guard().await;
            let txn = self.db.begin().await?;
            let mut select = account_policy::Entity::find_by_id(account_id.to_owned());
            if self.backend() == DbBackend::Postgres {
                select = select.lock_exclusive();
            }
            let current = select.one(&txn).await?.map(from_model).transpose()?;
            let Some((next, event)) = decide(current)? else {
                txn.rollback().await?;
                return Ok(None);
            };
            use account_policy::Column as C;
            account_policy::Entity::insert(to_active(&next)?)
                .on_conflict(
                    OnConflict::column(C::AccountId)
                        .update_columns([
                            C::MaxLifetimeSecs,
                            C::RequireExpiry,
                            C::MaxTokensPerOwner,
                            C::DisableUnusedAfterSecs,
                            C::DefaultAllowedCidrs,
                            C::ExpiryNoticeBeforeSecs,
                            C::UpdatedAt,
                            C::UpdatedBy,
                        ])
                        .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
            super::watch::order_events(&txn).await?;
            token_event::Entity::insert(token_event::ActiveModel {
                token_id: Set(String::new()),
                account_id: Set(next.account_id.clone()),
                owner_id: Set(String::new()),
                kind: Set(event.kind.as_str().to_owned()),
                actor_token_id: Set(event.actor.recorded_id()),
                actor_owner_id: Set(event.actor.owner_id().to_owned()),
                at: Set(next.updated_at),
                detail: Set(event.detail.clone()),
                ..Default::default()
            })
            .exec_without_returning(&txn)
            .await?;
            txn.commit().await?;
            self.events_committed();
            Ok(Some(next))
        })
        .await
    }
}
