//! Token-management use-cases. Each one authorises the caller, applies the
//! domain rules, commits through the store together with its audit event, and
//! then updates this process's validation cache on the same code path.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{DateTime, SubsecRound, Utc};

use crate::{
    domain::{
        Caller, EventKind, NewEvent, Token, TokenId, TokenState, TokenValue,
        fields::TokenName,
        page::{self, EventCursor, TokenCursor},
        privilege::{GrantError, Privilege},
        state::Transition,
        token::{Actor, Event, PreviousSecret},
        token_value::MalformedToken,
    },
    error::{Error, Result},
    manage_policy::{self, AccountPolicies},
    store::{Change, EventQuery, SearchQuery, Store},
    validation::{Reason, Validator, Verdict},
};

/// Service-wide rules.
#[derive(Debug, Clone)]
pub struct Policy {
    pub prefix: String,
    pub per_owner_limit: u32,
    pub max_rotate_grace: Duration,
    /// The policy of accounts that have none of their own.
    pub account_defaults: crate::domain::policy::AccountPolicy,
    /// WatchEvents' bounds.
    pub watch: crate::manage_watch::WatchConfig,
}

/// The current time at the precision the store keeps (microseconds), so that
/// page cursors and comparisons round-trip exactly.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A token and its full value, handed out once.
pub struct Issued {
    pub token: Token,
    pub value: TokenValue,
}

pub struct IssueInput {
    pub account_id: Option<String>,
    pub owner_id: Option<String>,
    pub name: TokenName,
    pub description: String,
    pub modules: Vec<String>,
    pub api_version: String,
    pub metadata: BTreeMap<String, String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Fields to change; `None` leaves a field alone.
#[derive(Default)]
pub struct UpdateInput {
    pub name: Option<TokenName>,
    pub description: Option<String>,
    pub modules: Option<Vec<String>>,
    pub api_version: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub expires_at: Option<Option<DateTime<Utc>>>,
}

pub enum RevokeTarget {
    Id(TokenId),
    Value(TokenValue),
}

/// Search by name substring or by full token value.
pub enum TextQuery {
    Name(String),
    Value(TokenValue),
}

#[derive(Default)]
pub struct SearchInput {
    pub account_id: Option<String>,
    pub query: Option<TextQuery>,
    pub states: Vec<TokenState>,
    pub include_revoked: bool,
    pub owner_id: Option<String>,
    pub created_by: Option<String>,
    pub module: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub last_used_before: Option<DateTime<Utc>>,
    pub last_used_after: Option<DateTime<Utc>>,
    pub page_size: u64,
    pub page_token: Option<String>,
    /// Also count every match of the filters (ignoring paging).
    pub include_total: bool,
    pub expires_before: Option<DateTime<Utc>>,
    pub expires_after: Option<DateTime<Utc>>,
    /// Tokens whose expiry breaks their account's current policy.
    pub breaks_policy: bool,
}

/// One page of a Search.
pub struct SearchPage {
    pub tokens: Vec<Token>,
    pub next_page_token: Option<String>,
    /// Every match of the filters, when asked for.
    pub total: Option<u64>,
}

pub struct EventsInput {
    pub token_id: Option<TokenId>,
    pub account_id: Option<String>,
    pub page_size: u64,
    pub page_token: Option<String>,
}

fn actor(caller: &Caller) -> Actor {
    Actor {
        token_id: caller.token_id.to_string(),
        owner_id: caller.owner_id().to_owned(),
    }
}

fn grant(caller: &Caller, field: &str, modules: &[String]) -> Result<()> {
    caller.check_grantable(field, modules).map_err(|e| match e {
        GrantError::Unknown(v) => Error::InvalidArgument(vec![v]),
        GrantError::NotHeld(m) => Error::PermissionDenied(m),
    })
}

fn revoked_is_final(e: crate::domain::state::RevokedIsFinal) -> Error {
    Error::FailedPrecondition(e.to_string())
}

pub struct TokenManager {
    store: Arc<Store>,
    validator: Arc<Validator>,
    policy: Policy,
    policies: AccountPolicies,
    watchers: crate::manage_watch::Watchers,
}

impl TokenManager {
    pub fn new(store: Arc<Store>, validator: Arc<Validator>, policy: Policy) -> Self {
        let policies = AccountPolicies::new(Arc::clone(&store), policy.account_defaults.clone());
        let watchers = crate::manage_watch::Watchers::new(policy.watch.clone());
        Self {
            store,
            validator,
            policy,
            policies,
            watchers,
        }
    }

    /// WatchEvents: the stream of `caller`'s events from `input`'s starting point.
    pub async fn watch_events(
        &self,
        caller: &Caller,
        input: crate::manage_watch::WatchInput,
    ) -> Result<tokio::sync::mpsc::Receiver<crate::manage_watch::WatchItem>> {
        self.watchers.start(&self.store, caller, input).await
    }

    /// Ends every WatchEvents stream (server drain).
    pub fn stop_watches(&self) {
        self.watchers.stop_all();
    }

    /// Account policies (GetAccountPolicy, UpdateAccountPolicy).
    pub fn policies(&self) -> &AccountPolicies {
        &self.policies
    }

    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    pub fn validator_arc(&self) -> &Arc<Validator> {
        &self.validator
    }

    /// Authenticates the bearer credential of an RPC.
    pub async fn authenticate(&self, credential: Option<&str>) -> Result<Caller> {
        let credential = credential.ok_or_else(|| {
            Error::Unauthenticated(
                "missing credential: send metadata `authorization: Bearer <token>`".into(),
            )
        })?;
        let value = TokenValue::parse(credential).map_err(|_| {
            Error::Unauthenticated("the credential is not a well-formed token".into())
        })?;
        let verdict = self.validator.validate(&value, &[], None).await?;
        match (verdict.reason, verdict.entry) {
            (Reason::Valid, Some(entry)) => {
                let s = &entry.snapshot;
                let (id, privileges, identity) = (s.id, s.privileges, s.identity.clone());
                Ok(Caller::new(id, privileges, identity))
            }
            (reason, _) => Err(Error::Unauthenticated(format!(
                "the credential was rejected: {reason}"
            ))),
        }
    }

    /// Validate on behalf of `caller`.
    pub async fn validate(
        &self,
        caller: &Caller,
        value: Result<&TokenValue, MalformedToken>,
        required_modules: &[String],
    ) -> Result<Verdict> {
        let Some(account) = caller.validation_scope() else {
            return Err(Error::PermissionDenied(
                "Validate requires tokens:validate, tokens:admin or tokens:platform".into(),
            ));
        };
        match value {
            Ok(value) => {
                self.validator
                    .validate(value, required_modules, account)
                    .await
            }
            Err(MalformedToken::TooLong) => {
                Err(Error::invalid("token", "must be at most 512 bytes"))
            }
            Err(_) => Ok(Verdict::rejected(Reason::Malformed)),
        }
    }

    pub async fn issue(&self, caller: &Caller, input: IssueInput) -> Result<Issued> {
        let account_id = input
            .account_id
            .unwrap_or_else(|| caller.account_id().to_owned());
        let owner_id = input
            .owner_id
            .unwrap_or_else(|| caller.owner_id().to_owned());
        if let Err(denied) = caller.may_manage(&account_id, &owner_id) {
            return Err(match denied {
                crate::domain::privilege::Denied::NotFound => Error::PermissionDenied(
                    "the caller cannot issue tokens in another account".into(),
                ),
                crate::domain::privilege::Denied::Permission(m) => Error::PermissionDenied(m),
            });
        }
        grant(caller, "modules", &input.modules)?;
        let now = now();
        let rules = self.policies.effective(&account_id).await?;
        rules
            .check_expiry(input.expires_at, now)
            .map_err(|b| manage_policy::refuse_field("expires_at", b))?;
        let template = Template {
            account_id,
            owner_id,
            name: input.name.into_inner(),
            description: input.description,
            modules: input.modules,
            api_version: input.api_version,
            metadata: input.metadata,
            expires_at: input.expires_at,
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

    /// `tokend bootstrap`: the first platform token, with no caller.
    pub async fn bootstrap(&self, account_id: String, owner_id: String) -> Result<Issued> {
        let template = Template {
            account_id,
            owner_id: owner_id.clone(),
            name: "bootstrap".into(),
            description: "created by `tokend bootstrap`".into(),
            modules: vec![Privilege::Platform.module().to_owned()],
            api_version: String::new(),
            metadata: BTreeMap::new(),
            expires_at: None,
        };
        let event = NewEvent {
            kind: EventKind::Issued,
            actor: Actor {
                token_id: "bootstrap".into(),
                owner_id: owner_id.clone(),
            },
            detail: "tokend bootstrap".into(),
        };
        let limit = self.policy.per_owner_limit;
        self.create(template, owner_id, event, now(), limit).await
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
        let secret_hash = self.validator.hasher().hash(value.secret()).await?;
        let verifier = Some(self.validator.cache().keyring().seal(&value));
        let token = Token {
            id: value.id(),
            account_id: t.account_id,
            owner_id: t.owner_id,
            updated_by: created_by.clone(),
            created_by,
            name: t.name,
            description: t.description,
            modules: t.modules,
            api_version: t.api_version,
            metadata: t.metadata,
            state: TokenState::Active,
            state_reason: String::new(),
            secret_hash,
            verifier,
            previous_secret: None,
            hint: value.hint(),
            created_at: now,
            updated_at: now,
            last_used_at: None,
            expires_at: t.expires_at,
            disabled_at: None,
            revoked_at: None,
        };
        self.store
            .insert_token(&token, &event, per_owner_limit)
            .await?;
        self.validator.apply(&token, Some(&value));
        Ok(Issued { token, value })
    }

    /// Loads a token the caller may manage.
    async fn load(&self, caller: &Caller, id: TokenId) -> Result<Token> {
        let token = self
            .store
            .find_token(id)
            .await?
            .ok_or_else(|| Error::token_not_found(id))?;
        caller
            .may_manage(&token.account_id, &token.owner_id)
            .map_err(|d| Error::denied(d, id))?;
        Ok(token)
    }

    pub async fn get(&self, caller: &Caller, id: TokenId) -> Result<Token> {
        self.load(caller, id).await
    }

    /// Runs a read-modify-write whose rules are in `decide`, after checking
    /// (inside the transaction) that the caller may manage the token.
    async fn mutate(
        &self,
        caller: &Caller,
        id: TokenId,
        fresh: Option<&TokenValue>,
        decide: impl FnOnce(Token) -> Result<Change> + Send,
    ) -> Result<Token> {
        self.commit(id, fresh, |token| {
            caller
                .may_manage(&token.account_id, &token.owner_id)
                .map_err(|d| Error::denied(d, id))?;
            decide(token)
        })
        .await
    }

    /// The store's read-modify-write, then this process's cache, on one path.
    /// Even an unchanged (idempotent) result refreshes the cache, so a retry
    /// heals it. When the outcome is unknown (the store timed out, yet the
    /// commit may still land) the cache is left alone: evicting would turn
    /// cache hits into UNAVAILABLE while the store is down, and a late commit
    /// reaches this replica's cache through the change log, which every
    /// replica (the origin included) reads.
    async fn commit(
        &self,
        id: TokenId,
        fresh: Option<&TokenValue>,
        decide: impl FnOnce(Token) -> Result<Change> + Send,
    ) -> Result<Token> {
        let (token, changed) = self.store.update_token(id, decide).await?;
        self.validator.apply(&token, fresh.filter(|_| changed));
        Ok(token)
    }

    pub async fn update(&self, caller: &Caller, id: TokenId, input: UpdateInput) -> Result<Token> {
        let actor = actor(caller);
        // A new expiry must fit the policy of the token's account (which never changes).
        let rules = match input.expires_at {
            Some(_) => Some(
                self.policies
                    .effective(&self.load(caller, id).await?.account_id)
                    .await?,
            ),
            None => None,
        };
        self.mutate(caller, id, None, |mut token| {
            token
                .state
                .ensure_mutable("updated")
                .map_err(revoked_is_final)?;
            let before = token.clone();
            let mut changed = Vec::new();
            if let Some(name) = input.name {
                token.name = name.into_inner();
                changed.push("name");
            }
            if let Some(d) = input.description {
                token.description = d;
                changed.push("description");
            }
            if let Some(modules) = input.modules {
                let added: Vec<String> = modules
                    .iter()
                    .filter(|m| !token.modules.contains(m))
                    .cloned()
                    .collect();
                grant(caller, "modules", &added)?;
                token.modules = modules;
                changed.push("modules");
            }
            if let Some(v) = input.api_version {
                token.api_version = v;
                changed.push("api_version");
            }
            if let Some(m) = input.metadata {
                token.metadata = m;
                changed.push("metadata");
            }
            if let Some(e) = input.expires_at {
                if let Some(rules) = &rules {
                    rules
                        .check_expiry(e, now())
                        .map_err(|b| manage_policy::refuse_field("expires_at", b))?;
                }
                token.expires_at = e;
                changed.push("expires_at");
            }
            if token == before {
                return Ok(Change::Unchanged(token));
            }
            token.updated_at = now();
            token.updated_by = actor.owner_id.clone();
            Ok(Change::Changed {
                token,
                event: NewEvent {
                    kind: EventKind::Updated,
                    actor,
                    detail: format!("fields: {}", changed.join(", ")),
                },
                live_delta: 0,
            })
        })
        .await
    }

    pub async fn set_state(
        &self,
        caller: &Caller,
        id: TokenId,
        target: TokenState,
        reason: String,
    ) -> Result<Token> {
        let actor = actor(caller);
        self.mutate(caller, id, None, |mut token| {
            match token.state.set(target).map_err(revoked_is_final)? {
                Transition::Unchanged => Ok(Change::Unchanged(token)),
                Transition::To(state) => {
                    let now = now();
                    token.state = state;
                    token.state_reason = reason.clone();
                    token.disabled_at = (state == TokenState::Disabled).then_some(now);
                    token.updated_at = now;
                    token.updated_by = actor.owner_id.clone();
                    let kind = if state == TokenState::Disabled {
                        EventKind::Disabled
                    } else {
                        EventKind::Enabled
                    };
                    Ok(Change::Changed {
                        token,
                        event: NewEvent {
                            kind,
                            actor,
                            detail: reason,
                        },
                        live_delta: 0,
                    })
                }
            }
        })
        .await
    }

    pub async fn revoke(
        &self,
        caller: &Caller,
        target: RevokeTarget,
        reason: String,
    ) -> Result<Token> {
        let actor = actor(caller);
        let revoke = move |mut token: Token| match token.state.revoke() {
            Transition::Unchanged => Ok(Change::Unchanged(token)),
            Transition::To(state) => {
                let now = now();
                token.state = state;
                token.state_reason = reason.clone();
                token.revoked_at = Some(now);
                token.previous_secret = None;
                token.updated_at = now;
                token.updated_by = actor.owner_id.clone();
                Ok(Change::Changed {
                    token,
                    event: NewEvent {
                        kind: EventKind::Revoked,
                        actor,
                        detail: reason,
                    },
                    live_delta: -1,
                })
            }
        };
        match target {
            RevokeTarget::Id(id) => self.mutate(caller, id, None, revoke).await,
            RevokeTarget::Value(value) => {
                // Whoever holds a leaked value may kill it: proof of possession
                // (the secret verifies) is the authorisation.
                if self.validator.possessed(&value).await?.is_none() {
                    return Err(Error::NotFound("no token matches this value".into()));
                }
                self.commit(value.id(), None, revoke).await
            }
        }
    }

    pub async fn rotate(&self, caller: &Caller, id: TokenId, grace: Duration) -> Result<Issued> {
        if grace > self.policy.max_rotate_grace {
            return Err(Error::invalid(
                "grace_period",
                format!(
                    "must be at most {}",
                    humantime::format_duration(self.policy.max_rotate_grace)
                ),
            ));
        }
        let grace = chrono::Duration::from_std(grace)
            .map_err(|_| Error::invalid("grace_period", "is out of range"))?;
        // Check access before spending argon2 work on the new secret. Rotate
        // hands the caller a working value, so, as for Duplicate, the caller
        // must hold every `tokens:*` privilege the token carries.
        let current = self.load(caller, id).await?;
        grant(caller, "modules", &current.modules)?;
        current
            .state
            .ensure_mutable("rotated")
            .map_err(revoked_is_final)?;
        self.policies
            .effective(&current.account_id)
            .await?
            .check_expiry(current.expires_at, now())
            .map_err(|b| manage_policy::refuse_token("rotated", b))?;
        let value = TokenValue::generate_for(&self.policy.prefix, id)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let new_hash = self.validator.hasher().hash(value.secret()).await?;
        let new_verifier = self.validator.cache().keyring().seal(&value);
        let actor = actor(caller);
        let hint = value.hint();
        let token = self
            .mutate(caller, id, Some(&value), |mut token| {
                token
                    .state
                    .ensure_mutable("rotated")
                    .map_err(revoked_is_final)?;
                grant(caller, "modules", &token.modules)?;
                let now = now();
                let old = std::mem::replace(&mut token.secret_hash, new_hash);
                let old_verifier = token.verifier.replace(new_verifier);
                token.previous_secret = if grace > chrono::Duration::zero() {
                    let expires_at = now
                        .checked_add_signed(grace)
                        .ok_or_else(|| Error::invalid("grace_period", "is out of range"))?;
                    Some(PreviousSecret {
                        hash: old,
                        verifier: old_verifier,
                        expires_at,
                    })
                } else {
                    None
                };
                token.hint = hint;
                token.updated_at = now;
                token.updated_by = actor.owner_id.clone();
                let detail = format!("grace_period={}s", grace.num_seconds());
                Ok(Change::Changed {
                    token,
                    event: NewEvent {
                        kind: EventKind::Rotated,
                        actor,
                        detail,
                    },
                    live_delta: 0,
                })
            })
            .await?;
        Ok(Issued { token, value })
    }

    pub async fn duplicate(
        &self,
        caller: &Caller,
        id: TokenId,
        name: Option<TokenName>,
    ) -> Result<Issued> {
        let source = self.load(caller, id).await?;
        source
            .state
            .ensure_mutable("duplicated")
            .map_err(revoked_is_final)?;
        grant(caller, "modules", &source.modules)?;
        let now = now();
        let name = name
            .unwrap_or_else(|| TokenName::copy_of(&source.name))
            .into_inner();
        let template = Template {
            account_id: source.account_id,
            owner_id: source.owner_id,
            name,
            description: source.description,
            modules: source.modules,
            api_version: source.api_version,
            metadata: source.metadata,
            expires_at: source.expires_at.filter(|e| *e > now),
        };
        let rules = self.policies.effective(&template.account_id).await?;
        rules
            .check_expiry(template.expires_at, now)
            .map_err(|b| manage_policy::refuse_token("duplicated", b))?;
        let event = NewEvent {
            kind: EventKind::Duplicated,
            actor: actor(caller),
            detail: format!("duplicate of {id}"),
        };
        let limit = rules.per_owner_limit(self.policy.per_owner_limit);
        self.create(template, caller.owner_id().to_owned(), event, now, limit)
            .await
    }

    pub async fn search(&self, caller: &Caller, input: SearchInput) -> Result<SearchPage> {
        let scope = caller.listing_scope().map_err(|d| Error::denied(d, ""))?;
        if let (Some(a), Some(b)) = (input.created_after, input.created_before)
            && a >= b
        {
            return Err(Error::invalid(
                "created_after",
                "must be before created_before",
            ));
        }
        let mut query = SearchQuery {
            scope: Some(scope.clone()),
            account_id: input.account_id.clone(),
            owner_id: input.owner_id.clone(),
            created_by: input.created_by.clone(),
            module: input.module.clone(),
            created_after: input.created_after,
            created_before: input.created_before,
            last_used_before: input.last_used_before,
            last_used_after: input.last_used_after,
            expires_before: input.expires_before,
            expires_after: input.expires_after,
            breaks: match input.breaks_policy {
                true => Some(
                    self.policies
                        .breach_filter(caller, input.account_id.as_deref())
                        .await?,
                ),
                false => None,
            },
            limit: input.page_size + 1,
            ..SearchQuery::default()
        };
        query.states = if input.states.is_empty() {
            if input.include_revoked {
                vec![]
            } else {
                vec![TokenState::Active, TokenState::Disabled]
            }
        } else {
            input.states.clone()
        };
        let mut query_key = String::new();
        match &input.query {
            None => {}
            Some(TextQuery::Name(text)) => {
                query.name_contains = Some(text.clone());
                query_key = format!("name:{text}");
            }
            Some(TextQuery::Value(value)) => {
                // A token value matches exactly its token, and only if its secret verifies.
                if self.validator.possessed(value).await?.is_none() {
                    return Ok(SearchPage {
                        tokens: Vec::new(),
                        next_page_token: None,
                        total: input.include_total.then_some(0),
                    });
                }
                query.id = Some(value.id());
                query_key = format!("id:{}", value.id());
            }
        }
        let filters = page::fingerprint(&format!(
            // The page size may change between pages; the filters may not.
            "{scope:?}|{:?}|{query_key}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}",
            query.account_id,
            query.states,
            query.owner_id,
            query.created_by,
            query.module,
            query.created_after,
            query.created_before,
            query.last_used_before,
            query.last_used_after,
            query.expires_before,
            query.expires_after,
            input.breaks_policy,
        ));
        if let Some(t) = &input.page_token {
            query.after = Some(TokenCursor::decode("page_token", t, filters)?);
        }
        let mut tokens = self.store.search_tokens(&query).await?;
        let next = if tokens.len() as u64 > input.page_size {
            tokens.truncate(input.page_size as usize);
            tokens.last().map(|t| {
                TokenCursor {
                    created_at: t.created_at,
                    id: t.id,
                }
                .encode(filters)
            })
        } else {
            None
        };
        let total = if input.include_total {
            Some(self.store.count_tokens(&query).await?)
        } else {
            None
        };
        Ok(SearchPage {
            tokens,
            next_page_token: next,
            total,
        })
    }

    pub async fn list_events(
        &self,
        caller: &Caller,
        input: EventsInput,
    ) -> Result<(Vec<Event>, Option<String>)> {
        let scope = caller.listing_scope().map_err(|d| Error::denied(d, ""))?;
        let filters = page::fingerprint(&format!(
            "{scope:?}|{:?}|{:?}",
            input.token_id, input.account_id
        ));
        let after = match &input.page_token {
            Some(t) => Some(EventCursor::decode("page_token", t, filters)?),
            None => None,
        };
        let query = EventQuery {
            scope,
            token_id: input.token_id.map(|t| t.to_string()),
            account_id: input.account_id,
            after,
            limit: input.page_size + 1,
        };
        let mut events = self.store.list_events(&query).await?;
        let next = if events.len() as u64 > input.page_size {
            events.truncate(input.page_size as usize);
            events
                .last()
                .map(|e| EventCursor { id: e.id }.encode(filters))
        } else {
            None
        };
        Ok((events, next))
    }
}

/// The settable fields of a new token.
struct Template {
    account_id: String,
    owner_id: String,
    name: String,
    description: String,
    modules: Vec<String>,
    api_version: String,
    metadata: BTreeMap<String, String>,
    expires_at: Option<DateTime<Utc>>,
}
