//! Entity models <-> domain types. Modules and metadata are stored as JSON text
//! so the same schema works on SQLite and PostgreSQL.

use std::collections::BTreeMap;

use sea_orm::ActiveValue::Set;

use super::entities::{HashColumn, token, token_event};
use crate::{
    domain::{
        NewEvent, Token, TokenId, TokenState,
        token::{Actor, Event, EventKind, PreviousSecret, SecretHash},
    },
    error::{Error, Result},
};

fn corrupt(what: &str, id: &str) -> Error {
    Error::Internal(format!("stored {what} of token {id} is unreadable"))
}

pub fn token_from_model(m: token::Model) -> Result<Token> {
    let id = TokenId::parse(&m.id).ok_or_else(|| corrupt("id", &m.id))?;
    let modules: Vec<String> =
        serde_json::from_str(&m.modules).map_err(|_| corrupt("modules", &m.id))?;
    let metadata: BTreeMap<String, String> =
        serde_json::from_str(&m.metadata).map_err(|_| corrupt("metadata", &m.id))?;
    let state = TokenState::parse(&m.state).ok_or_else(|| corrupt("state", &m.id))?;
    let previous_secret = match (m.prev_secret_hash, m.prev_secret_expires_at) {
        (Some(hash), Some(expires_at)) => Some(PreviousSecret {
            hash: SecretHash::new(hash.0),
            expires_at,
        }),
        _ => None,
    };
    Ok(Token {
        id,
        account_id: m.account_id,
        owner_id: m.owner_id,
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
        previous_secret,
        hint: m.hint,
        created_at: m.created_at,
        updated_at: m.updated_at,
        last_used_at: m.last_used_at,
        expires_at: m.expires_at,
        disabled_at: m.disabled_at,
        revoked_at: m.revoked_at,
    })
}

pub fn token_to_active(t: &Token) -> Result<token::ActiveModel> {
    let json = |e: serde_json::Error| Error::Internal(format!("encoding token fields: {e}"));
    Ok(token::ActiveModel {
        id: Set(t.id.to_string()),
        account_id: Set(t.account_id.clone()),
        owner_id: Set(t.owner_id.clone()),
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
        hint: Set(t.hint.clone()),
        created_at: Set(t.created_at),
        updated_at: Set(t.updated_at),
        last_used_at: Set(t.last_used_at),
        expires_at: Set(t.expires_at),
        disabled_at: Set(t.disabled_at),
        revoked_at: Set(t.revoked_at),
    })
}

pub fn event_from_model(m: token_event::Model) -> Result<Event> {
    let kind = EventKind::parse(&m.kind)
        .ok_or_else(|| Error::Internal(format!("stored event {} has an unknown kind", m.id)))?;
    Ok(Event {
        id: m.id,
        token_id: m.token_id,
        account_id: m.account_id,
        owner_id: m.owner_id,
        kind,
        actor: Actor {
            token_id: m.actor_token_id,
            owner_id: m.actor_owner_id,
        },
        at: m.at,
        detail: m.detail,
    })
}

/// The audit row of `event`, a change to `token` (recorded at its `updated_at`).
pub fn event_to_active(token: &Token, event: &NewEvent) -> token_event::ActiveModel {
    token_event::ActiveModel {
        token_id: Set(token.id.to_string()),
        account_id: Set(token.account_id.clone()),
        owner_id: Set(token.owner_id.clone()),
        kind: Set(event.kind.as_str().to_owned()),
        actor_token_id: Set(event.actor.token_id.clone()),
        actor_owner_id: Set(event.actor.owner_id.clone()),
        at: Set(token.updated_at),
        detail: Set(event.detail.clone()),
        ..Default::default()
    }
}
