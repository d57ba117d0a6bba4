//! Entity models <-> domain types. Modules and metadata are stored as JSON text
//! so the same schema works on SQLite and PostgreSQL.

use std::collections::BTreeMap;

use sea_orm::ActiveValue::Set;

use super::{
    entities::{HashColumn, VerifierColumn, token, token_event},
    verifiers::WarmRow,
};
use crate::{
    domain::{
        AccountId, NewEvent, OwnerId, Token, TokenId, TokenState,
        policy::Cidr,
        token::{
            Actor, Event, EventKind, PreviousSecret, SecretHash, StoredVerifier, ValidationRecord,
        },
    },
    error::{Error, Result},
};

fn corrupt(what: &str, id: &str) -> Error {
    Error::Internal(format!("stored {what} of token {id} is unreadable"))
}

/// The `allowed_cidrs` column: NULL (unbound, and every row from before IP
/// binding) or a JSON array of normalised ranges.
fn allowed_cidrs(column: Option<&str>, id: &str) -> Result<Vec<Cidr>> {
    let Some(json) = column else {
        return Ok(Vec::new());
    };
    let texts: Vec<String> =
        serde_json::from_str(json).map_err(|_| corrupt("allowed_cidrs", id))?;
    Cidr::parse_list("allowed_cidrs", &texts).map_err(|_| corrupt("allowed_cidrs", id))
}

/// The column of `ranges`: NULL when there are none.
pub fn allowed_cidrs_column(ranges: &[Cidr]) -> Option<String> {
    if ranges.is_empty() {
        return None;
    }
    let texts: Vec<String> = ranges.iter().map(ToString::to_string).collect();
    serde_json::to_string(&texts).ok()
}

/// The columns every reader of a token decodes the same way.
struct Parsed {
    id: TokenId,
    modules: Vec<String>,
    metadata: BTreeMap<String, String>,
    state: TokenState,
    previous_secret: Option<PreviousSecret>,
}

#[allow(clippy::too_many_arguments)]
fn parse(
    id: &str,
    modules: &str,
    metadata: &str,
    state: &str,
    prev_hash: Option<HashColumn>,
    prev_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    prev_key_id: Option<String>,
    prev_verifier: Option<VerifierColumn>,
) -> Result<Parsed> {
    let parsed_id = TokenId::parse(id).ok_or_else(|| corrupt("id", id))?;
    let modules: Vec<String> = serde_json::from_str(modules).map_err(|_| corrupt("modules", id))?;
    let metadata: BTreeMap<String, String> =
        serde_json::from_str(metadata).map_err(|_| corrupt("metadata", id))?;
    let state = TokenState::parse(state).ok_or_else(|| corrupt("state", id))?;
    let previous_secret = match (prev_hash, prev_expires_at) {
        (Some(hash), Some(expires_at)) => Some(PreviousSecret {
            hash: SecretHash::new(hash.0),
            verifier: verifier_from_columns(prev_key_id, prev_verifier),
            expires_at,
        }),
        _ => None,
    };
    Ok(Parsed {
        id: parsed_id,
        modules,
        metadata,
        state,
        previous_secret,
    })
}

pub fn validation_record_from_row(r: WarmRow) -> Result<ValidationRecord> {
    let allowed_cidrs = allowed_cidrs(r.allowed_cidrs.as_deref(), &r.id)?;
    let p = parse(
        &r.id,
        &r.modules,
        &r.metadata,
        &r.state,
        r.prev_secret_hash,
        r.prev_secret_expires_at,
        r.prev_verifier_key_id,
        r.prev_verifier,
    )?;
    Ok(ValidationRecord {
        id: p.id,
        account_id: AccountId::from_stored(r.account_id),
        owner_id: OwnerId::from_stored(r.owner_id),
        modules: p.modules,
        api_version: r.api_version,
        metadata: p.metadata,
        state: p.state,
        expires_at: r.expires_at,
        secret_hash: SecretHash::new(r.secret_hash.0),
        verifier: verifier_from_columns(r.verifier_key_id, r.verifier),
        previous_secret: p.previous_secret,
        allowed_cidrs,
    })
}

pub fn token_from_model(m: token::Model) -> Result<Token> {
    let allowed_cidrs = allowed_cidrs(m.allowed_cidrs.as_deref(), &m.id)?;
    let Parsed {
        id,
        modules,
        metadata,
        state,
        previous_secret,
    } = parse(
        &m.id,
        &m.modules,
        &m.metadata,
        &m.state,
        m.prev_secret_hash,
        m.prev_secret_expires_at,
        m.prev_verifier_key_id,
        m.prev_verifier,
    )?;
    Ok(Token {
        id,
        account_id: AccountId::from_stored(m.account_id),
        owner_id: OwnerId::from_stored(m.owner_id),
        created_by: m.created_by,
        updated_by: m.updated_by,
        name: m.name,
        description: m.description,
        modules,
        api_version: m.api_version,
        metadata,
        state,
        state_reason: m.state_reason,
        secret_hash: SecretHash::new(m.secret_hash.0),
        verifier: verifier_from_columns(m.verifier_key_id, m.verifier),
        previous_secret,
        hint: m.hint,
        created_at: m.created_at,
        updated_at: m.updated_at,
        last_used_at: m.last_used_at,
        expires_at: m.expires_at,
        disabled_at: m.disabled_at,
        revoked_at: m.revoked_at,
        allowed_cidrs,
    })
}

/// A stored verifier, if both columns hold one of the right size. Anything
/// else (a row from before verifiers, a damaged value) reads as none: the
/// token is then verified by argon2, never trusted on a bad verifier.
pub fn verifier_from_columns(
    key_id: Option<String>,
    mac: Option<VerifierColumn>,
) -> Option<StoredVerifier> {
    let mac: [u8; 32] = mac?.0.try_into().ok()?;
    Some(StoredVerifier {
        key_id: key_id?,
        mac,
    })
}

pub fn verifier_column(v: &StoredVerifier) -> VerifierColumn {
    VerifierColumn(v.mac.to_vec())
}

pub fn token_to_active(t: &Token) -> Result<token::ActiveModel> {
    let json = |e: serde_json::Error| Error::Internal(format!("encoding token fields: {e}"));
    Ok(token::ActiveModel {
        id: Set(t.id.to_string()),
        account_id: Set(t.account_id.as_str().to_owned()),
        owner_id: Set(t.owner_id.as_str().to_owned()),
        created_by: Set(t.created_by.clone()),
        updated_by: Set(t.updated_by.clone()),
        name: Set(t.name.clone()),
        description: Set(t.description.clone()),
        modules: Set(serde_json::to_string(&t.modules).map_err(json)?),
        api_version: Set(t.api_version.clone()),
        metadata: Set(serde_json::to_string(&t.metadata).map_err(json)?),
        state: Set(t.state.as_str().to_owned()),
        state_reason: Set(t.state_reason.clone()),
        secret_hash: Set(HashColumn(t.secret_hash.as_phc().to_owned())),
        prev_secret_hash: Set(t
            .previous_secret
            .as_ref()
            .map(|p| HashColumn(p.hash.as_phc().to_owned()))),
        prev_secret_expires_at: Set(t.previous_secret.as_ref().map(|p| p.expires_at)),
        verifier_key_id: Set(t.verifier.as_ref().map(|v| v.key_id.clone())),
        verifier: Set(t.verifier.as_ref().map(verifier_column)),
        prev_verifier_key_id: Set(t
            .previous_secret
            .as_ref()
            .and_then(|p| p.verifier.as_ref())
            .map(|v| v.key_id.clone())),
        prev_verifier: Set(t
            .previous_secret
            .as_ref()
            .and_then(|p| p.verifier.as_ref())
            .map(verifier_column)),
        hint: Set(t.hint.clone()),
        created_at: Set(t.created_at),
        updated_at: Set(t.updated_at),
        last_used_at: Set(t.last_used_at),
        expires_at: Set(t.expires_at),
        disabled_at: Set(t.disabled_at),
        revoked_at: Set(t.revoked_at),
        allowed_cidrs: Set(allowed_cidrs_column(&t.allowed_cidrs)),
    })
}

pub fn event_from_model(m: token_event::Model) -> Result<Event> {
    let kind = EventKind::parse(&m.kind)
        .ok_or_else(|| Error::Internal(format!("stored event {} has an unknown kind", m.id)))?;
    Ok(Event {
        id: m.id,
        token_id: m.token_id,
        account_id: AccountId::from_stored(m.account_id),
        owner_id: OwnerId::from_stored(m.owner_id),
        kind,
        actor: Actor::from_recorded(m.actor_token_id, m.actor_owner_id),
        at: m.at,
        detail: m.detail,
    })
}

/// The audit row of `event`, a change to `token` (recorded at its `updated_at`).
pub fn event_to_active(token: &Token, event: &NewEvent) -> token_event::ActiveModel {
    token_event::ActiveModel {
        token_id: Set(token.id.to_string()),
        account_id: Set(token.account_id.as_str().to_owned()),
        owner_id: Set(token.owner_id.as_str().to_owned()),
        kind: Set(event.kind.as_str().to_owned()),
        actor_token_id: Set(event.actor.recorded_id()),
        actor_owner_id: Set(event.actor.owner_id().to_owned()),
        at: Set(token.updated_at),
        detail: Set(event.detail.clone()),
        ..Default::default()
    }
}
