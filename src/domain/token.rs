//! The token record as the service sees it, and the audit events recorded with
//! every change.

use std::{collections::BTreeMap, fmt};

use chrono::{DateTime, Utc};

use super::{AccountId, OwnerId, TokenId, TokenState, policy::Cidr};

/// An argon2id PHC string. Its `Debug` is redacted: the hash must never reach a
/// log line, an error or a response.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash(String);

impl SecretHash {
    pub fn new(phc: String) -> Self {
        Self(phc)
    }

    pub fn as_phc(&self) -> &str {
        &self.0
    }

    pub fn into_phc(self) -> String {
        self.0
    }

    /// A short fingerprint that tells two hashes apart without revealing either:
    /// the validation cache uses it to know whether a remembered secret digest
    /// still belongs to the token's current (or previous) secret.
    pub fn tag(&self) -> u64 {
        super::fingerprint64(self.0.as_bytes())
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(<redacted>)")
    }
}

/// A keyed verifier of a token's secret as stored beside its hash: the id of
/// the server-held key it was made under, and the 256-bit MAC. Without the key
/// it proves nothing; its `Debug` shows the key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredVerifier {
    pub key_id: String,
    pub mac: [u8; 32],
}

impl fmt::Debug for StoredVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredVerifier")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The secret that was current before the last Rotate, valid until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    pub hash: SecretHash,
    /// Its verifier, when one was made (tokens issued before verifiers have none).
    pub verifier: Option<StoredVerifier>,
    pub expires_at: DateTime<Utc>,
}

/// A token record. Never carries the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: TokenId,
    pub account_id: AccountId,
    pub owner_id: OwnerId,
    pub created_by: String,
    pub updated_by: String,
    pub name: String,
    pub description: String,
    pub modules: Vec<String>,
    pub api_version: String,
    pub metadata: BTreeMap<String, String>,
    pub state: TokenState,
    pub state_reason: String,
    pub secret_hash: SecretHash,
    /// The keyed verifier of the current secret (none for tokens issued before
    /// verifiers existed, until their first use writes one).
    pub verifier: Option<StoredVerifier>,
    pub previous_secret: Option<PreviousSecret>,
    pub hint: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The client address ranges the token is valid from (normalised, no
    /// duplicates); empty: unbound, valid from anywhere.
    pub allowed_cidrs: Vec<Cidr>,
}

/// What Validate needs of a token: the fields its cache entry is built from.
/// The warm start reads only these from the store (a row of them decodes
/// several times faster than a whole record, timestamps being the costly part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationRecord {
    pub id: TokenId,
    pub account_id: AccountId,
    pub owner_id: OwnerId,
    pub modules: Vec<String>,
    pub api_version: String,
    pub metadata: BTreeMap<String, String>,
    pub state: TokenState,
    pub expires_at: Option<DateTime<Utc>>,
    pub secret_hash: SecretHash,
    pub verifier: Option<StoredVerifier>,
    pub previous_secret: Option<PreviousSecret>,
    /// Empty: unbound.
    pub allowed_cidrs: Vec<Cidr>,
}

/// The same fields, borrowed from a `Token` or a `ValidationRecord`.
#[derive(Debug, Clone, Copy)]
pub struct ValidationView<'a> {
    pub id: TokenId,
    pub account_id: &'a str,
    pub owner_id: &'a str,
    pub modules: &'a [String],
    pub api_version: &'a str,
    pub metadata: &'a BTreeMap<String, String>,
    pub state: TokenState,
    pub expires_at: Option<DateTime<Utc>>,
    pub secret_hash: &'a SecretHash,
    pub verifier: Option<&'a StoredVerifier>,
    pub previous_secret: Option<&'a PreviousSecret>,
    pub allowed_cidrs: &'a [Cidr],
}

impl ValidationView<'_> {
    pub fn to_record(&self) -> ValidationRecord {
        ValidationRecord {
            id: self.id,
            account_id: AccountId::from_stored(self.account_id.to_owned()),
            owner_id: OwnerId::from_stored(self.owner_id.to_owned()),
            modules: self.modules.to_vec(),
            api_version: self.api_version.to_owned(),
            metadata: self.metadata.clone(),
            state: self.state,
            expires_at: self.expires_at,
            secret_hash: self.secret_hash.clone(),
            verifier: self.verifier.cloned(),
            previous_secret: self.previous_secret.cloned(),
            allowed_cidrs: self.allowed_cidrs.to_vec(),
        }
    }
}

/// `view()` for the two records Validate's cache is built from: one body, so
/// a field added to `ValidationView` cannot be filled from one and forgotten
/// in the other.
macro_rules! validation_view {
    ($record:ty) => {
        impl $record {
            /// The fields Validate needs, borrowed.
            pub fn view(&self) -> ValidationView<'_> {
                ValidationView {
                    id: self.id,
                    account_id: self.account_id.as_str(),
                    owner_id: self.owner_id.as_str(),
                    modules: &self.modules,
                    api_version: &self.api_version,
                    metadata: &self.metadata,
                    state: self.state,
                    expires_at: self.expires_at,
                    secret_hash: &self.secret_hash,
                    verifier: self.verifier.as_ref(),
                    previous_secret: self.previous_secret.as_ref(),
                    allowed_cidrs: &self.allowed_cidrs,
                }
            }

            /// The previous secret, if its grace period is still running.
            pub fn live_previous_secret(&self, now: DateTime<Utc>) -> Option<&PreviousSecret> {
                self.previous_secret.as_ref().filter(|p| p.expires_at > now)
            }
        }
    };
}

validation_view!(Token);
validation_view!(ValidationRecord);

impl Token {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// What an audit event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Issued,
    Updated,
    Disabled,
    Enabled,
    Revoked,
    Rotated,
    Duplicated,
    /// An account's policy changed (the event names no token).
    PolicyUpdated,
    /// The sweeper: a token's expiry is within one of its account's notice
    /// horizons (detail: the horizon and the expiry).
    ExpiringSoon,
    /// The sweeper: a token's expiry has passed (detail: the expiry).
    Expired,
    /// The sweeper disabled a token unused for longer than its account's
    /// `disable_unused_after` (detail: the state reason).
    AutoDisabled,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        Self::Issued,
        Self::Updated,
        Self::Disabled,
        Self::Enabled,
        Self::Revoked,
        Self::Rotated,
        Self::Duplicated,
        Self::PolicyUpdated,
        Self::ExpiringSoon,
        Self::Expired,
        Self::AutoDisabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Updated => "updated",
            Self::Disabled => "disabled",
            Self::Enabled => "enabled",
            Self::Revoked => "revoked",
            Self::Rotated => "rotated",
            Self::Duplicated => "duplicated",
            Self::PolicyUpdated => "policy_updated",
            Self::ExpiringSoon => "expiring_soon",
            Self::Expired => "expired",
            Self::AutoDisabled => "auto_disabled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Who made a change, and on behalf of which owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A caller, by its credential token.
    Token { id: TokenId, owner_id: String },
    /// `tokend bootstrap`, which has no caller.
    Bootstrap { owner_id: String },
    /// A tool that wrote rows directly (`tokend import`, benchmark seeding),
    /// by the name it recorded.
    Tool { name: String, owner_id: String },
    /// The service itself: the sweeper's notices and auto-disables. Recorded
    /// as `tokend` for both the actor's id and owner (`SERVICE`).
    Service,
}

impl Actor {
    /// How the bootstrap actor is recorded and shown (`actor_token_id`).
    pub const BOOTSTRAP: &'static str = "bootstrap";
    /// How the service is recorded and shown (`actor_token_id` and
    /// `actor_owner_id`): never a token id (those are 16 characters) and
    /// never an owner a caller can be given (`tokend bootstrap` and Issue
    /// take any owner id, so the pair, not the owner alone, marks it).
    pub const SERVICE: &'static str = "tokend";

    /// The actor of a recorded event, from its recorded id and owner: a
    /// token id, `bootstrap`, or else a tool's name.
    pub fn from_recorded(id: String, owner_id: String) -> Self {
        if id == Self::BOOTSTRAP {
            Self::Bootstrap { owner_id }
        } else if id == Self::SERVICE && owner_id == Self::SERVICE {
            Self::Service
        } else if let Some(id) = TokenId::parse(&id) {
            Self::Token { id, owner_id }
        } else {
            Self::Tool { name: id, owner_id }
        }
    }

    /// The recorded form of who acted (the `actor_token_id` of an event).
    pub fn recorded_id(&self) -> String {
        match self {
            Self::Token { id, .. } => id.to_string(),
            Self::Bootstrap { .. } => Self::BOOTSTRAP.to_owned(),
            Self::Tool { name, .. } => name.clone(),
            Self::Service => Self::SERVICE.to_owned(),
        }
    }

    pub fn owner_id(&self) -> &str {
        match self {
            Self::Token { owner_id, .. }
            | Self::Bootstrap { owner_id }
            | Self::Tool { owner_id, .. } => owner_id,
            Self::Service => Self::SERVICE,
        }
    }
}

/// An audit event to record in the same transaction as the change it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub kind: EventKind,
    pub actor: Actor,
    pub detail: String,
}

/// A recorded audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: i64,
    pub token_id: String,
    pub account_id: AccountId,
    pub owner_id: OwnerId,
    pub kind: EventKind,
    pub actor: Actor,
    pub at: DateTime<Utc>,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_round_trip_through_their_recorded_form() {
        let owner = || "ops".to_owned();
        let token = Actor::Token {
            id: TokenId::parse("0123456789abcdef").unwrap_or_else(|| unreachable!()),
            owner_id: owner(),
        };
        for actor in [
            token,
            Actor::Bootstrap { owner_id: owner() },
            Actor::Tool {
                name: "tokend-bench".into(),
                owner_id: owner(),
            },
            Actor::Service,
        ] {
            let back = Actor::from_recorded(actor.recorded_id(), actor.owner_id().to_owned());
            assert_eq!(back, actor);
        }
        assert_eq!(
            Actor::Bootstrap { owner_id: owner() }.recorded_id(),
            "bootstrap",
            "the form existing databases hold"
        );
    }

    #[test]
    fn event_kinds_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
    }

    #[test]
    fn hash_debug_is_redacted_and_tags_differ() {
        let a = SecretHash::new("$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA".into());
        let b = SecretHash::new("$argon2id$v=19$m=8,t=1,p=1$c2FsdA$b3RoZXI".into());
        assert!(!format!("{a:?}").contains("argon2"));
        assert_ne!(a.tag(), b.tag());
        assert_eq!(a.tag(), a.clone().tag());
    }
}
