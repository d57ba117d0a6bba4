//! Use-cases that make a new token: Issue, `tokend bootstrap` and Duplicate.
//! All three end in `create`: generate the value, hash and seal its secret,
//! insert the row with its audit event, and cache the new value's digest so
//! its first Validate is already a hit.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{IssueInput, Issued, TokenManager, actor, grant, revoked_is_final};
use crate::{
    domain::{
        AccountId, Caller, EventKind, NewEvent, OwnerId, Token, TokenId, TokenState, TokenValue,
        fields::TokenName,
        policy::{AccountPolicy, Cidr},
        privilege::{Denied, Privilege},
        token::{Actor, SecretHash, StoredVerifier},
    },
    error::{Error, Result},
};

/// The settable fields of a new token.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    account_id: AccountId,
    owner_id: OwnerId,
    name: String,
    description: String,
    modules: Vec<String>,
    api_version: String,
    metadata: BTreeMap<String, String>,
    expires_at: Option<DateTime<Utc>>,
    allowed_cidrs: Vec<Cidr>,
}

/// The ranges a new token is bound to: those its request names, else
/// `inherited` (a duplicated token's), else the account policy's default.
fn bind(requested: Vec<Cidr>, inherited: Vec<Cidr>, rules: &AccountPolicy) -> Vec<Cidr> {
    if !requested.is_empty() {
        requested
    } else if !inherited.is_empty() {
        inherited
    } else {
        rules.default_allowed_cidrs.clone()
    }
}

impl Template {
    /// What Duplicate copies from `source`: everything settable, under
    /// `name` (by default "<name> (copy)"), except an expiry already past.
    fn duplicate_of(source: Token, name: Option<TokenName>, now: DateTime<Utc>) -> Self {
        let name = name
            .unwrap_or_else(|| TokenName::copy_of(&source.name))
            .into_inner();
        Self {
            account_id: source.account_id,
            owner_id: source.owner_id,
            name,
            description: source.description,
            modules: source.modules,
            api_version: source.api_version,
            metadata: source.metadata,
            expires_at: source.expires_at.filter(|e| *e > now),
            allowed_cidrs: source.allowed_cidrs,
        }
    }

    /// The new, active token for `value`.
    fn into_token(
        self,
        value: &TokenValue,
        created_by: String,
        secret_hash: SecretHash,
        verifier: StoredVerifier,
        now: DateTime<Utc>,
    ) -> Token {
        Token {
            id: value.id(),
            account_id: self.account_id,
            owner_id: self.owner_id,
            updated_by: created_by.clone(),
            created_by,
            name: self.name,
            description: self.description,
            modules: self.modules,
            api_version: self.api_version,
            metadata: self.metadata,
            state: TokenState::Active,
            state_reason: String::new(),
            secret_hash,
            verifier: Some(verifier),
            previous_secret: None,
            hint: value.hint(),
            created_at: now,
            updated_at: now,
            last_used_at: None,
            expires_at: self.expires_at,
            disabled_at: None,
            revoked_at: None,
            allowed_cidrs: self.allowed_cidrs,
        }
    }
}

impl TokenManager {
    pub async fn issue(&self, caller: &Caller, input: IssueInput) -> Result<Issued> {
        let account_id = input
            .account_id
            .unwrap_or_else(|| AccountId::from_stored(caller.account_id().to_owned()));
        let owner_id = input
            .owner_id
            .unwrap_or_else(|| OwnerId::from_stored(caller.owner_id().to_owned()));
        if let Err(denied) = caller.may_manage(&account_id, &owner_id) {
            return Err(match denied {
                Denied::NotFound => Error::PermissionDenied(
                    "the caller cannot issue tokens in another account".into(),
                ),
                Denied::Permission(m) => Error::PermissionDenied(m),
            });
        }
        grant(caller, "modules", &input.modules)?;
        let now = self.now();
        let rules = self.policies.effective(&account_id).await?;
        rules
            .check_expiry(input.expires_at, now)
            .map_err(|b| crate::manage::policy::refuse_field("expires_at", b))?;
        let template = Template {
            account_id,
            owner_id,
            name: input.name.into_inner(),
            description: input.description,
            modules: input.modules,
            api_version: input.api_version,
            metadata: input.metadata,
            expires_at: input.expires_at,
            allowed_cidrs: bind(input.allowed_cidrs, Vec::new(), &rules),
        };
        self.create(
            template,
            caller.owner_id().to_owned(),
            NewEvent {
                kind: EventKind::Issued,
                actor: actor(caller),
                detail: String::new(),
            },
            now,
            rules.per_owner_limit(self.policy.per_owner_limit),
        )
        .await
    }

    /// `tokend bootstrap`: the first platform token, with no caller. The
    /// ids are parsed here, this use-case's edge (the `account` and `owner`
    /// arguments of the command).
    pub async fn bootstrap(&self, account: &str, owner: &str) -> Result<Issued> {
        let account_id = AccountId::parse("account", account)?;
        let owner_id = OwnerId::parse("owner", owner)?;
        let template = Template {
            account_id,
            owner_id: owner_id.clone(),
            name: "bootstrap".into(),
            description: "created by `tokend bootstrap`".into(),
            modules: vec![Privilege::Platform.module().to_owned()],
            api_version: String::new(),
            metadata: BTreeMap::new(),
            expires_at: None,
            // The platform's first credential is never bound: binding it
            // wrongly would lock the operator out.
            allowed_cidrs: Vec::new(),
        };
        let event = NewEvent {
            kind: EventKind::Issued,
            actor: Actor::Bootstrap {
                owner_id: owner_id.as_str().to_owned(),
            },
            detail: "tokend bootstrap".into(),
        };
        let limit = self.policy.per_owner_limit;
        self.create(template, owner_id.into_inner(), event, self.now(), limit)
            .await
    }

    pub async fn duplicate(
        &self,
        caller: &Caller,
        id: TokenId,
        name: Option<TokenName>,
        allowed_cidrs: Vec<Cidr>,
    ) -> Result<Issued> {
        let source = self.load(caller, id).await?;
        source
            .state
            .ensure_mutable("duplicated")
            .map_err(revoked_is_final)?;
        grant(caller, "modules", &source.modules)?;
        let now = self.now();
        let mut template = Template::duplicate_of(source, name, now);
        let rules = self.policies.effective(&template.account_id).await?;
        template.allowed_cidrs = bind(
            allowed_cidrs,
            std::mem::take(&mut template.allowed_cidrs),
            &rules,
        );
        rules
            .check_expiry(template.expires_at, now)
            .map_err(|b| crate::manage::policy::refuse_token("duplicated", b))?;
        let event = NewEvent {
            kind: EventKind::Duplicated,
            actor: actor(caller),
            detail: format!("duplicate of {id}"),
        };
        let limit = rules.per_owner_limit(self.policy.per_owner_limit);
        self.create(template, caller.owner_id().to_owned(), event, now, limit)
            .await
    }

    async fn create(
        &self,
        t: Template,
        created_by: String,
        event: NewEvent,
        now: DateTime<Utc>,
        per_owner_limit: u32,
    ) -> Result<Issued> {
        let value = TokenValue::generate(&self.policy.prefix)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let secret_hash = self.hasher.hash(value.secret()).await?;
        let verifier = self.keyring.seal(&value);
        let token = t.into_token(&value, created_by, secret_hash, verifier, now);
        self.store
            .insert_token(&token, &event, per_owner_limit)
            .await?;
        self.validator.apply(&token, Some(&value));
        Ok(Issued { token, value })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chrono::TimeZone;

    use super::*;
    use crate::validation::cache::tests::{keyring, token};

    const KEY: &str = "a:0101010101010101010101010101010101010101010101010101010101010101";

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    #[test]
    fn a_duplicate_copies_the_settable_fields_and_drops_a_past_expiry() {
        let value = TokenValue::generate("tk").unwrap();
        let mut source = token(value.id(), "h");
        source.description = "d".into();
        source.expires_at = Some(at(100));
        let copy = Template::duplicate_of(source.clone(), None, at(200));
        assert_eq!(copy.name, "n (copy)");
        assert_eq!(
            copy.expires_at, None,
            "an expiry already past is not copied"
        );
        assert_eq!(
            (copy.account_id.as_str(), copy.owner_id.as_str()),
            ("acme", "alice")
        );
        assert_eq!(copy.description, "d");
        assert_eq!(copy.modules, source.modules);
        assert_eq!(copy.allowed_cidrs, source.allowed_cidrs);
        let named = Template::duplicate_of(
            source,
            Some(TokenName::parse("name", "other").unwrap()),
            at(50),
        );
        assert_eq!(named.name, "other");
        assert_eq!(named.expires_at, Some(at(100)), "a future expiry is kept");
    }

    #[test]
    fn ranges_come_from_the_request_else_the_source_else_the_policy() {
        let c = |s: &str| Cidr::parse("c", s).unwrap();
        let rules = AccountPolicy {
            default_allowed_cidrs: vec![c("10.0.0.0/8")],
            ..Default::default()
        };
        assert_eq!(
            bind(vec![c("::1")], vec![c("192.0.2.0/24")], &rules),
            [c("::1")]
        );
        assert_eq!(
            bind(vec![], vec![c("192.0.2.0/24")], &rules),
            [c("192.0.2.0/24")]
        );
        assert_eq!(bind(vec![], vec![], &rules), [c("10.0.0.0/8")]);
        assert!(bind(vec![], vec![], &AccountPolicy::default()).is_empty());
    }

    #[test]
    fn a_new_token_is_active_and_created_by_its_creator() {
        let value = TokenValue::generate("tk").unwrap();
        let template = Template::duplicate_of(token(value.id(), "h"), None, at(0));
        let sealed = keyring(KEY).seal(&value);
        let t = template.into_token(
            &value,
            "bob".into(),
            SecretHash::new("hash".into()),
            sealed.clone(),
            at(7),
        );
        assert_eq!(t.id, value.id());
        assert_eq!(t.state, TokenState::Active);
        assert_eq!(
            (t.created_by.as_str(), t.updated_by.as_str()),
            ("bob", "bob")
        );
        assert_eq!((t.created_at, t.updated_at), (at(7), at(7)));
        assert_eq!(t.hint, value.hint());
        assert_eq!(t.verifier, Some(sealed));
        assert!(t.previous_secret.is_none() && t.revoked_at.is_none());
    }
}
