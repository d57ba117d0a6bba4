//! Account-policy use-cases: reading and changing an account's policy (for
//! its `tokens:admin` or a platform caller, each change audited in its
//! transaction), and the policy in force that the token use-cases in
//! `manage` enforce. Accounts without a policy of their own follow the
//! server's defaults (`--policy-*` flags).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::{
    domain::{
        AccountId, Caller, EventKind, NewEvent, Privilege,
        policy::{AccountPolicy, Breach, PolicyField, StoredPolicy},
        token::Actor,
    },
    error::{Error, Result},
    store::{ExpiryBreach, Store},
    validation::clock::Clock,
};

/// A policy as callers see it: the rules in force and where they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyView {
    pub account_id: String,
    pub policy: AccountPolicy,
    /// The account has its own policy (else the server's defaults apply).
    pub custom: bool,
    pub updated_at: Option<DateTime<Utc>>,
    pub updated_by: String,
}

/// An UpdateAccountPolicy: new values for the fields named in `fields`.
#[derive(Debug, Clone)]
pub struct PolicyPatch {
    pub account_id: Option<String>,
    pub values: AccountPolicy,
    pub fields: Vec<PolicyField>,
}

/// The policies of every account, over the store.
pub struct AccountPolicies {
    store: Arc<Store>,
    defaults: AccountPolicy,
    clock: Clock,
}

/// A request field that breaks the policy: INVALID_ARGUMENT naming the field
/// and the rule.
pub fn refuse_field(field: &str, breach: Breach) -> Error {
    Error::invalid(field, breach.to_string())
}

/// A token that already breaks the policy (made before it was tightened):
/// FAILED_PRECONDITION naming the rule and how to bring the token in line.
pub fn refuse_token(action: &str, breach: Breach) -> Error {
    Error::FailedPrecondition(format!(
        "the token cannot be {action}: its expiry breaks {breach}; \
         Update its expires_at to bring it in line first"
    ))
}

fn view(account_id: String, stored: Option<StoredPolicy>, defaults: &AccountPolicy) -> PolicyView {
    match stored {
        Some(s) => PolicyView {
            account_id,
            policy: s.policy,
            custom: true,
            updated_at: Some(s.updated_at),
            updated_by: s.updated_by,
        },
        None => PolicyView {
            account_id,
            policy: defaults.clone(),
            custom: false,
            updated_at: None,
            updated_by: String::new(),
        },
    }
}

fn describe(field: PolicyField, p: &AccountPolicy) -> String {
    let dur = |d: Option<std::time::Duration>| {
        d.map_or("none".to_owned(), |d| {
            humantime::format_duration(d).to_string()
        })
    };
    let value = match field {
        PolicyField::MaxLifetime => dur(p.max_lifetime),
        PolicyField::RequireExpiry => p.require_expiry.to_string(),
        PolicyField::MaxTokensPerOwner => p
            .max_tokens_per_owner
            .map_or("server default".to_owned(), |n| n.to_string()),
        PolicyField::DisableUnusedAfter => dur(p.disable_unused_after),
        PolicyField::DefaultAllowedCidrs => {
            let c: Vec<String> = p
                .default_allowed_cidrs
                .iter()
                .map(|c| c.to_string())
                .collect();
            format!("[{}]", c.join(", "))
        }
        PolicyField::ExpiryNoticeBefore => {
            let n: Vec<String> = p
                .expiry_notice_before
                .iter()
                .map(|d| humantime::format_duration(*d).to_string())
                .collect();
            format!("[{}]", n.join(", "))
        }
    };
    format!("{}={value}", field.as_str())
}

impl AccountPolicies {
    pub fn new(store: Arc<Store>, defaults: AccountPolicy, clock: Clock) -> Self {
        Self {
            store,
            defaults,
            clock,
        }
    }

    /// The policy in force for `account_id`.
    pub async fn effective(&self, account_id: &AccountId) -> Result<AccountPolicy> {
        Ok(match self.store.find_policy(account_id.as_str()).await? {
            Some(s) => s.policy,
            None => self.defaults.clone(),
        })
    }

    /// The account a policy RPC is about, once the caller may administer it.
    fn authorize(caller: &Caller, account_id: Option<String>) -> Result<String> {
        let account_id = account_id.unwrap_or_else(|| caller.account_id().to_owned());
        let p = caller.privileges;
        if p.has(Privilege::Platform)
            || (p.has(Privilege::Admin) && account_id == caller.account_id())
        {
            return Ok(account_id);
        }
        Err(Error::PermissionDenied(if p.has(Privilege::Admin) {
            "tokens:admin covers only the caller's own account's policy".into()
        } else {
            "account policies require tokens:admin on the account or tokens:platform".into()
        }))
    }

    /// Search's `breaks_policy`: the expiries that break the policy of the
    /// searched account (`account_id`, or a non-platform caller's own).
    pub async fn breach_filter(
        &self,
        caller: &Caller,
        account_id: Option<&str>,
    ) -> Result<ExpiryBreach> {
        let account = match account_id {
            Some(a) => AccountId::parse("account_id", a)?,
            None if caller.privileges.has(Privilege::Platform) => {
                return Err(Error::invalid(
                    "breaks_policy",
                    "needs account_id: each account has its own policy",
                ));
            }
            None => AccountId::from_stored(caller.account_id().to_owned()),
        };
        let (missing, later_than) = self
            .effective(&account)
            .await?
            .breaking_expiries(self.clock.now_utc());
        Ok(ExpiryBreach {
            missing,
            later_than,
        })
    }

    pub async fn get(&self, caller: &Caller, account_id: Option<String>) -> Result<PolicyView> {
        let account_id = Self::authorize(caller, account_id)?;
        let stored = self.store.find_policy(&account_id).await?;
        Ok(view(account_id, stored, &self.defaults))
    }

    /// Applies `patch` over the policy in force and commits it, with a
    /// `PolicyUpdated` event naming the new values, in one transaction. An
    /// account with its own policy that the patch does not change records
    /// nothing. Existing tokens are not touched.
    pub async fn update(&self, caller: &Caller, patch: PolicyPatch) -> Result<PolicyView> {
        if patch.fields.is_empty() {
            return Err(Error::invalid(
                "update_mask",
                "must name at least one of: max_lifetime, require_expiry, max_tokens_per_owner, \
                 disable_unused_after, default_allowed_cidrs, expiry_notice_before",
            ));
        }
        let account_id = Self::authorize(caller, patch.account_id.clone())?;
        let actor = Actor::Token {
            id: caller.token_id,
            owner_id: caller.owner_id().to_owned(),
        };
        let defaults = self.defaults.clone();
        let now = self.clock.now_utc();
        let id = account_id.clone();
        let written = self
            .store
            .update_policy(&account_id, move |current| {
                let had_own = current.is_some();
                let mut policy = current.map_or(defaults, |s| s.policy);
                let before = policy.clone();
                let v = patch.values;
                for f in &patch.fields {
                    match f {
                        PolicyField::MaxLifetime => policy.max_lifetime = v.max_lifetime,
                        PolicyField::RequireExpiry => policy.require_expiry = v.require_expiry,
                        PolicyField::MaxTokensPerOwner => {
                            policy.max_tokens_per_owner = v.max_tokens_per_owner
                        }
                        PolicyField::DisableUnusedAfter => {
                            policy.disable_unused_after = v.disable_unused_after
                        }
                        PolicyField::DefaultAllowedCidrs => {
                            policy.default_allowed_cidrs = v.default_allowed_cidrs.clone()
                        }
                        PolicyField::ExpiryNoticeBefore => {
                            policy.expiry_notice_before = v.expiry_notice_before.clone()
                        }
                    }
                }
                if had_own && policy == before {
                    return Ok(None);
                }
                let detail = patch
                    .fields
                    .iter()
                    .map(|f| describe(*f, &policy))
                    .collect::<Vec<_>>()
                    .join("; ");
                let updated_by = actor.owner_id().to_owned();
                Ok(Some((
                    StoredPolicy {
                        account_id: id,
                        policy,
                        updated_at: now,
                        updated_by,
                    },
                    NewEvent {
                        kind: EventKind::PolicyUpdated,
                        actor,
                        detail,
                    },
                )))
            })
            .await?;
        match written {
            Some(s) => Ok(view(account_id, Some(s), &self.defaults)),
            None => self.get(caller, Some(account_id)).await,
        }
    }
}
