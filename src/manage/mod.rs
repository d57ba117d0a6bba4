//! Token-management use-cases. Each one authorises the caller, applies the
//! domain rules, commits through the store together with its audit event, and
//! then updates this process's validation cache on the same code path.
//!
//! One file per use-case family: `create` (Issue, bootstrap, Duplicate),
//! `lifecycle` (Update, SetState, Revoke, Rotate), `listing` (Search,
//! ListEvents), `sweeper` (the hygiene sweeper: expiry notices, auto-disable);
//! `inputs` holds the parsed inputs the api layer builds. This
//! file holds `TokenManager` and the plumbing they share (authentication,
//! load, the read-modify-write commit).

mod create;
mod inputs;
mod lifecycle;
mod listing;
pub mod policy;
pub mod sweeper;
pub mod watch;

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};

pub use self::inputs::{
    EventsInput, IssueInput, Issued, RevokeTarget, SearchInput, SearchPage, TextQuery, UpdateInput,
};
use crate::{
    domain::{
        Caller, Token, TokenId, TokenValue, privilege::GrantError, token::Actor,
        token_value::MalformedToken,
    },
    error::{Error, Result},
    store::{Change, Store},
    validation::{
        Client, Reason, Validator, Verdict, cache::Entry, callers::CallerMemo, clock::Clock,
        hasher::Hasher, verifier::Keyring,
    },
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
    pub watch: crate::manage::watch::WatchConfig,
}

/// The system clock at the precision the store keeps (microseconds), for
/// code with no `Clock` of its own (the benchmark's seeding, tests).
pub fn now() -> DateTime<Utc> {
    Clock::system().now_utc()
}

fn actor(caller: &Caller) -> Actor {
    Actor::Token {
        id: caller.token_id,
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

/// What making a new secret takes: the argon2 pool that hashes it and the
/// verifier keys that seal it. The manager holds its own handles rather than
/// reaching through the validator, which only checks secrets.
pub struct Secrets {
    pub hasher: Arc<Hasher>,
    pub keyring: Arc<Keyring>,
}

pub struct TokenManager {
    store: Arc<Store>,
    validator: Arc<Validator>,
    hasher: Arc<Hasher>,
    keyring: Arc<Keyring>,
    clock: Clock,
    policy: Policy,
    policies: crate::manage::policy::AccountPolicies,
    watchers: crate::manage::watch::Watchers,
}

impl TokenManager {
    pub fn new(
        store: Arc<Store>,
        validator: Arc<Validator>,
        secrets: Secrets,
        clock: Clock,
        policy: Policy,
    ) -> Self {
        let policies = crate::manage::policy::AccountPolicies::new(
            Arc::clone(&store),
            policy.account_defaults.clone(),
            clock.clone(),
        );
        let watchers = crate::manage::watch::Watchers::new(policy.watch.clone());
        Self {
            store,
            validator,
            hasher: secrets.hasher,
            keyring: secrets.keyring,
            clock,
            policy,
            policies,
            watchers,
        }
    }

    /// Account policies (GetAccountPolicy, UpdateAccountPolicy).
    pub fn policies(&self) -> &crate::manage::policy::AccountPolicies {
        &self.policies
    }

    /// WatchEvents: the stream of `caller`'s events from `input`'s starting point.
    pub async fn watch_events(
        &self,
        caller: &Caller,
        input: crate::manage::watch::WatchInput,
    ) -> Result<tokio::sync::mpsc::Receiver<crate::manage::watch::WatchItem>> {
        self.watchers.start(&self.store, caller, input).await
    }

    /// Ends every WatchEvents stream (server drain).
    pub fn stop_watches(&self) {
        self.watchers.stop_all();
    }

    /// The validator the use-cases keep the cache coherent through; read by
    /// tests and the stop report (argon2 verifications, cache size).
    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    /// The current time at the store's precision.
    fn now(&self) -> DateTime<Utc> {
        self.clock.now_utc()
    }

    /// Authenticates the bearer credential of an RPC. `memo` is the
    /// connection's remembered caller (`validation::callers`), when the
    /// credential came over a connection that keeps one.
    /// `peer` is the address the credential came from (the TCP peer), which
    /// an IP-bound credential must be inside of.
    pub async fn authenticate(
        &self,
        credential: Option<&[u8]>,
        peer: Client,
        memo: Option<&CallerMemo>,
    ) -> Result<Caller> {
        let credential = credential.ok_or_else(|| {
            Error::Unauthenticated(
                "missing credential: send metadata `authorization: Bearer <token>`".into(),
            )
        })?;
        if let Some(caller) = memo.and_then(|memo| self.remembered(credential, peer, memo)) {
            return Ok(caller);
        }
        let value = std::str::from_utf8(credential)
            .ok()
            .and_then(|text| TokenValue::parse(text).ok())
            .ok_or_else(|| {
                Error::Unauthenticated("the credential is not a well-formed token".into())
            })?;
        // Before the entry is read: a change after this point voids the memo.
        let mark = self.validator.cache().mark(&value.id());
        let verdict = self
            .validator
            .validate(&value, &[] as &[&str], None, peer)
            .await?;
        match (verdict.reason, verdict.entry) {
            (Reason::Valid, Some(entry)) => {
                let caller = caller_of(&entry);
                if let Some(memo) = memo {
                    self.validator.remember(memo, credential, entry, mark);
                }
                Ok(caller)
            }
            (reason, _) => Err(Error::Unauthenticated(format!(
                "the credential was rejected: {reason}"
            ))),
        }
    }

    /// The caller `memo` remembers for this connection, when `credential`
    /// is still its credential (see `Validator::recall`); `None`: call
    /// `authenticate`. No await: Validate's fast path starts here.
    pub fn remembered(&self, credential: &[u8], peer: Client, memo: &CallerMemo) -> Option<Caller> {
        self.validator
            .recall(memo, credential, peer)
            .map(|entry| caller_of(&entry))
    }

    /// Validate on behalf of `caller`, for an end client at `client_ip`
    /// (`None`: not known, which an IP-bound token refuses).
    pub async fn validate(
        &self,
        caller: &Caller,
        value: Result<&TokenValue, MalformedToken>,
        required_modules: &[impl AsRef<str> + Sync],
        client_ip: Option<std::net::IpAddr>,
    ) -> Result<Verdict> {
        let (value, account) = match validation_input(caller, value) {
            Ok(input) => input,
            Err(answer) => return answer,
        };
        self.validator
            .validate(value, required_modules, account, client_ip)
            .await
    }

    /// `validate` when memory alone can answer, with no await; `Ok(None)`:
    /// call `validate`.
    pub fn validate_now(
        &self,
        caller: &Caller,
        value: Result<&TokenValue, MalformedToken>,
        required_modules: &[impl AsRef<str>],
        client_ip: Option<std::net::IpAddr>,
    ) -> Result<Option<Verdict>> {
        let (value, account) = match validation_input(caller, value) {
            Ok(input) => input,
            Err(answer) => return answer.map(Some),
        };
        Ok(self
            .validator
            .validate_now(value, required_modules, account, client_ip))
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
        let updated = self.store.update_token(id, decide).await?;
        let fresh = fresh.filter(|_| updated.committed());
        self.validator.apply(updated.token(), fresh);
        Ok(updated.into_token())
    }
}

/// What Validate checks before any lookup: the caller's scope (the account
/// whose tokens it may see; `None`: any) and a well-formed value. `Err` is
/// already the answer.
fn validation_input<'c, 'v>(
    caller: &'c Caller,
    value: Result<&'v TokenValue, MalformedToken>,
) -> std::result::Result<(&'v TokenValue, Option<&'c str>), Result<Verdict>> {
    let Some(account) = caller.validation_scope() else {
        return Err(Err(Error::PermissionDenied(
            "Validate requires tokens:validate, tokens:admin or tokens:platform".into(),
        )));
    };
    match value {
        Ok(value) => Ok((value, account)),
        Err(MalformedToken::TooLong) => {
            Err(Err(Error::invalid("token", "must be at most 512 bytes")))
        }
        Err(_) => Err(Ok(Verdict::rejected(Reason::Malformed))),
    }
}

/// The caller a valid credential's cache entry describes.
fn caller_of(entry: &Entry) -> Caller {
    let s = &entry.snapshot;
    Caller::new(s.id, s.privileges, s.identity.clone())
}
