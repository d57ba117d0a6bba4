//! Use-cases that change an existing token: Update, SetState, Revoke and
//! Rotate. Each is a read-modify-write (`TokenManager::mutate`) whose rules
//! are pure functions of the current token (`updated`, `state_set`,
//! `revoked`, `rotated`), tested below without a store.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{RevokeTarget, TokenManager, UpdateInput, actor, grant, revoked_is_final};
use crate::{
    domain::{
        Caller, EventKind, NewEvent, Token, TokenId, TokenState,
        state::Transition,
        token::{Actor, PreviousSecret, SecretHash, StoredVerifier},
    },
    error::{Error, Result},
    manage::Issued,
    store::Change,
};

/// Update's rule: apply the fields `input` sets; an update that changes
/// nothing is `Unchanged` (idempotent), else one event names the fields.
fn updated(mut token: Token, input: UpdateInput, actor: Actor, now: DateTime<Utc>) -> Change {
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
        token.expires_at = e;
        changed.push("expires_at");
    }
    if let Some(ranges) = input.allowed_cidrs {
        token.allowed_cidrs = ranges;
        changed.push("allowed_cidrs");
    }
    if token == before {
        return Change::Unchanged(token);
    }
    token.updated_at = now;
    token.updated_by = actor.owner_id().to_owned();
    Change::Changed {
        token,
        event: NewEvent {
            kind: EventKind::Updated,
            actor,
            detail: format!("fields: {}", changed.join(", ")),
        },
        live_delta: 0,
    }
}

/// SetState's rule (enable or disable); a revoked token stays revoked.
fn state_set(
    mut token: Token,
    target: TokenState,
    reason: String,
    actor: Actor,
    now: DateTime<Utc>,
) -> Result<Change> {
    Ok(match token.state.set(target).map_err(revoked_is_final)? {
        Transition::Unchanged => Change::Unchanged(token),
        Transition::To(state) => {
            token.state = state;
            token.state_reason = reason.clone();
            token.disabled_at = (state == TokenState::Disabled).then_some(now);
            token.updated_at = now;
            token.updated_by = actor.owner_id().to_owned();
            let kind = if state == TokenState::Disabled {
                EventKind::Disabled
            } else {
                EventKind::Enabled
            };
            Change::Changed {
                token,
                event: NewEvent {
                    kind,
                    actor,
                    detail: reason,
                },
                live_delta: 0,
            }
        }
    })
}

/// Revoke's rule: final, drops any previous secret, and frees the owner's
/// quota slot; revoking again changes nothing.
fn revoked(mut token: Token, reason: String, actor: Actor, now: DateTime<Utc>) -> Change {
    match token.state.revoke() {
        Transition::Unchanged => Change::Unchanged(token),
        Transition::To(state) => {
            token.state = state;
            token.state_reason = reason.clone();
            token.revoked_at = Some(now);
            token.previous_secret = None;
            token.updated_at = now;
            token.updated_by = actor.owner_id().to_owned();
            Change::Changed {
                token,
                event: NewEvent {
                    kind: EventKind::Revoked,
                    actor,
                    detail: reason,
                },
                live_delta: -1,
            }
        }
    }
}

/// The new secret of a Rotate, made before the transaction.
struct NewSecret {
    hash: SecretHash,
    verifier: StoredVerifier,
    hint: String,
}

/// Rotate's rule: the new secret replaces the current one, which stays
/// valid for `grace` (none when zero).
fn rotated(
    mut token: Token,
    new: NewSecret,
    grace: chrono::Duration,
    actor: Actor,
    now: DateTime<Utc>,
) -> Result<Change> {
    let old = std::mem::replace(&mut token.secret_hash, new.hash);
    let old_verifier = token.verifier.replace(new.verifier);
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
    token.hint = new.hint;
    token.updated_at = now;
    token.updated_by = actor.owner_id().to_owned();
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
}

impl TokenManager {
    pub async fn update(&self, caller: &Caller, id: TokenId, input: UpdateInput) -> Result<Token> {
        let actor = actor(caller);
        // A new expiry must fit the policy of the token's account (which never changes).
        if let Some(e) = input.expires_at {
            let account = self.load(caller, id).await?.account_id;
            self.policies
                .effective(&account)
                .await?
                .check_expiry(e, self.now())
                .map_err(|b| crate::manage::policy::refuse_field("expires_at", b))?;
        }
        self.mutate(caller, id, None, |token| {
            token
                .state
                .ensure_mutable("updated")
                .map_err(revoked_is_final)?;
            if let Some(modules) = &input.modules {
                let added: Vec<String> = modules
                    .iter()
                    .filter(|m| !token.modules.contains(m))
                    .cloned()
                    .collect();
                grant(caller, "modules", &added)?;
            }
            Ok(updated(token, input, actor, self.now()))
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
        self.mutate(caller, id, None, |token| {
            state_set(token, target, reason, actor, self.now())
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
        let revoke = move |token: Token| Ok(revoked(token, reason, actor, self.now()));
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
            .check_expiry(current.expires_at, self.now())
            .map_err(|b| crate::manage::policy::refuse_token("rotated", b))?;
        let value = crate::domain::TokenValue::generate_for(&self.policy.prefix, id)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let new = NewSecret {
            hash: self.hasher.hash(value.secret()).await?,
            verifier: self.keyring.seal(&value),
            hint: value.hint(),
        };
        let actor = actor(caller);
        let token = self
            .mutate(caller, id, Some(&value), |token| {
                token
                    .state
                    .ensure_mutable("rotated")
                    .map_err(revoked_is_final)?;
                grant(caller, "modules", &token.modules)?;
                rotated(token, new, grace, actor, self.now())
            })
            .await?;
        Ok(Issued { token, value })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use chrono::TimeZone;

    use super::*;
    use crate::{
        domain::{TokenValue, fields::TokenName},
        validation::cache::tests::{keyring, token},
    };

    const KEY: &str = "a:0101010101010101010101010101010101010101010101010101010101010101";

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    fn bob() -> Actor {
        Actor::from_recorded("0123456789abcdef".into(), "bob".into())
    }

    fn fixture() -> Token {
        token(TokenValue::generate("tk").unwrap().id(), "old-hash")
    }

    fn changed(c: Change) -> (Token, NewEvent, i64) {
        match c {
            Change::Changed {
                token,
                event,
                live_delta,
            } => (token, event, live_delta),
            Change::Unchanged(_) => panic!("expected a change"),
        }
    }

    #[test]
    fn an_update_names_the_changed_fields_and_a_no_op_is_unchanged() {
        let t = fixture();
        let input = UpdateInput {
            name: Some(TokenName::parse("name", "renamed").unwrap()),
            api_version: Some("v1".into()), // the same as before: not a change on its own
            ..UpdateInput::default()
        };
        let (t2, event, delta) = changed(updated(t.clone(), input, bob(), at(9)));
        assert_eq!(t2.name, "renamed");
        assert_eq!(event.kind, EventKind::Updated);
        assert_eq!(event.detail, "fields: name, api_version");
        assert_eq!(
            (t2.updated_at, t2.updated_by.as_str(), delta),
            (at(9), "bob", 0)
        );

        let same = UpdateInput {
            name: Some(TokenName::parse("name", "n").unwrap()),
            ..UpdateInput::default()
        };
        assert!(
            matches!(updated(t, same, bob(), at(9)), Change::Unchanged(u) if u.updated_by == "alice")
        );
    }

    #[test]
    fn set_state_disables_enables_and_repeats_as_unchanged() {
        let (off, event, _) = changed(
            state_set(fixture(), TokenState::Disabled, "why".into(), bob(), at(5)).unwrap(),
        );
        assert_eq!(
            (off.state, off.disabled_at),
            (TokenState::Disabled, Some(at(5)))
        );
        assert_eq!(
            (event.kind, event.detail.as_str()),
            (EventKind::Disabled, "why")
        );
        assert!(matches!(
            state_set(
                off.clone(),
                TokenState::Disabled,
                "again".into(),
                bob(),
                at(6)
            )
            .unwrap(),
            Change::Unchanged(_)
        ));
        let (on, event, _) =
            changed(state_set(off, TokenState::Active, String::new(), bob(), at(7)).unwrap());
        assert_eq!((on.state, on.disabled_at), (TokenState::Active, None));
        assert_eq!(event.kind, EventKind::Enabled);
    }

    #[test]
    fn revoke_is_final_frees_the_quota_and_drops_the_previous_secret() {
        let mut t = fixture();
        t.previous_secret = Some(PreviousSecret {
            hash: SecretHash::new("prev".into()),
            verifier: None,
            expires_at: at(100),
        });
        let (gone, event, delta) = changed(revoked(t, "leaked".into(), bob(), at(3)));
        assert_eq!(
            (gone.state, gone.revoked_at),
            (TokenState::Revoked, Some(at(3)))
        );
        assert!(gone.previous_secret.is_none());
        assert_eq!((event.kind, delta), (EventKind::Revoked, -1));
        assert!(matches!(
            revoked(gone.clone(), "again".into(), bob(), at(4)),
            Change::Unchanged(_)
        ));
        assert!(state_set(gone, TokenState::Active, String::new(), bob(), at(5)).is_err());
    }

    #[test]
    fn rotate_keeps_the_old_secret_for_the_grace_only() {
        let value = TokenValue::generate("tk").unwrap();
        let new = || NewSecret {
            hash: SecretHash::new("new-hash".into()),
            verifier: keyring(KEY).seal(&value),
            hint: value.hint(),
        };
        let grace = chrono::Duration::seconds(60);
        let (t, event, _) = changed(rotated(fixture(), new(), grace, bob(), at(10)).unwrap());
        assert!(t.secret_hash == SecretHash::new("new-hash".into()));
        let previous = t.previous_secret.unwrap();
        assert!(previous.hash == SecretHash::new("old-hash".into()));
        assert_eq!(previous.expires_at, at(70));
        assert_eq!(event.detail, "grace_period=60s");
        let (t, _, _) =
            changed(rotated(fixture(), new(), chrono::Duration::zero(), bob(), at(10)).unwrap());
        assert!(t.previous_secret.is_none());
        assert_eq!(t.hint, value.hint());
    }
}
