//! Wire <-> domain conversions. Request fields are parsed into domain types
//! here, at the edge; each failure names the offending field.

use chrono::{DateTime, Utc};

use crate::{
    domain::{
        FieldViolation, Token, TokenId, TokenState, fields,
        token::{Event, EventKind},
    },
    pb,
    validation::Reason,
};

type Parsed<T> = Result<T, FieldViolation>;

/// Earliest and latest instants we accept: 1970-01-01 .. 9999-12-31.
const MIN_SECONDS: i64 = 0;
const MAX_SECONDS: i64 = 253_402_300_799;

pub fn timestamp(field: &str, ts: &prost_types::Timestamp) -> Parsed<DateTime<Utc>> {
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) || !(0..1_000_000_000).contains(&ts.nanos)
    {
        return Err(FieldViolation::new(
            field,
            "is out of range (1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z)",
        ));
    }
    let micros_nanos = (ts.nanos / 1000) * 1000; // stored at microsecond precision
    DateTime::from_timestamp(ts.seconds, micros_nanos as u32)
        .ok_or_else(|| FieldViolation::new(field, "is out of range"))
}

pub fn opt_timestamp(
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Parsed<Option<DateTime<Utc>>> {
    ts.map(|t| timestamp(field, t)).transpose()
}

pub fn to_timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn duration(field: &str, d: Option<&prost_types::Duration>) -> Parsed<std::time::Duration> {
    match d {
        None => Ok(std::time::Duration::ZERO),
        Some(d) if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 => Err(
            FieldViolation::new(field, "must be a non-negative duration"),
        ),
        Some(d) => Ok(std::time::Duration::new(d.seconds as u64, d.nanos as u32)),
    }
}

pub fn token_id(field: &str, s: &str) -> Parsed<TokenId> {
    if s.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    TokenId::parse(s)
        .ok_or_else(|| FieldViolation::new(field, "is not a token id (16 letters or digits)"))
}

pub fn opt_token_id(field: &str, s: &str) -> Parsed<Option<TokenId>> {
    if s.is_empty() {
        Ok(None)
    } else {
        token_id(field, s).map(Some)
    }
}

pub fn opt_principal(field: &str, s: &str) -> Parsed<Option<String>> {
    if s.is_empty() {
        Ok(None)
    } else {
        fields::principal(field, s).map(Some)
    }
}

pub fn state(field: &str, value: i32) -> Parsed<TokenState> {
    match pb::State::try_from(value) {
        Ok(pb::State::Active) => Ok(TokenState::Active),
        Ok(pb::State::Disabled) => Ok(TokenState::Disabled),
        Ok(pb::State::Revoked) => Ok(TokenState::Revoked),
        Ok(pb::State::Unspecified) => {
            Err(FieldViolation::new(field, "must not be STATE_UNSPECIFIED"))
        }
        Err(_) => Err(FieldViolation::new(
            field,
            format!("unknown state value {value}"),
        )),
    }
}

fn state_to_pb(s: TokenState) -> pb::State {
    match s {
        TokenState::Active => pb::State::Active,
        TokenState::Disabled => pb::State::Disabled,
        TokenState::Revoked => pb::State::Revoked,
    }
}

pub fn reason_to_pb(r: Reason) -> pb::Reason {
    match r {
        Reason::Valid => pb::Reason::Valid,
        Reason::Malformed => pb::Reason::Malformed,
        Reason::Unknown => pb::Reason::Unknown,
        Reason::Disabled => pb::Reason::Disabled,
        Reason::Revoked => pb::Reason::Revoked,
        Reason::Expired => pb::Reason::Expired,
        Reason::MissingModules => pb::Reason::MissingModules,
    }
}

pub(super) fn event_kind_to_pb(k: EventKind) -> pb::EventKind {
    match k {
        EventKind::Issued => pb::EventKind::Issued,
        EventKind::Updated => pb::EventKind::Updated,
        EventKind::Disabled => pb::EventKind::Disabled,
        EventKind::Enabled => pb::EventKind::Enabled,
        EventKind::Revoked => pb::EventKind::Revoked,
        EventKind::Rotated => pb::EventKind::Rotated,
        EventKind::Duplicated => pb::EventKind::Duplicated,
        EventKind::PolicyUpdated => pb::EventKind::PolicyUpdated,
    }
}

/// A requested event kind; UNSPECIFIED and unknown values are refused.
pub(super) fn event_kind_from_pb(field: &str, value: i32) -> Parsed<EventKind> {
    match pb::EventKind::try_from(value) {
        Ok(k) => EventKind::ALL
            .into_iter()
            .find(|d| event_kind_to_pb(*d) == k)
            .ok_or_else(|| FieldViolation::new(field, "must not be EVENT_KIND_UNSPECIFIED")),
        Err(_) => Err(FieldViolation::new(
            field,
            format!("unknown event kind value {value}"),
        )),
    }
}

pub fn token_to_pb(t: &Token, now: DateTime<Utc>) -> pb::Token {
    pb::Token {
        id: t.id.to_string(),
        account_id: t.account_id.clone(),
        owner_id: t.owner_id.clone(),
        created_by: t.created_by.clone(),
        name: t.name.clone(),
        description: t.description.clone(),
        modules: t.modules.clone(),
        api_version: t.api_version.clone(),
        metadata: t
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        state: state_to_pb(t.state) as i32,
        expired: t.is_expired(now),
        hint: t.hint.clone(),
        created_at: Some(to_timestamp(t.created_at)),
        updated_at: Some(to_timestamp(t.updated_at)),
        last_used_at: t.last_used_at.map(to_timestamp),
        expires_at: t.expires_at.map(to_timestamp),
        disabled_at: t.disabled_at.map(to_timestamp),
        revoked_at: t.revoked_at.map(to_timestamp),
        state_reason: t.state_reason.clone(),
        previous_secret_expires_at: t
            .live_previous_secret(now)
            .map(|p| to_timestamp(p.expires_at)),
        updated_by: t.updated_by.clone(),
    }
}

pub fn event_to_pb(e: &Event) -> pb::Event {
    pb::Event {
        id: e.id,
        token_id: e.token_id.clone(),
        account_id: e.account_id.clone(),
        owner_id: e.owner_id.clone(),
        kind: event_kind_to_pb(e.kind) as i32,
        actor_token_id: e.actor.token_id.clone(),
        actor_owner_id: e.actor.owner_id.clone(),
        at: Some(to_timestamp(e.at)),
        detail: e.detail.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn timestamps_are_range_checked_and_truncated_to_micros() {
        let t = timestamp(
            "t",
            &prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_789,
            },
        )
        .unwrap();
        assert_eq!(t.timestamp_subsec_nanos(), 123_456_000);
        assert!(
            timestamp(
                "t",
                &prost_types::Timestamp {
                    seconds: -1,
                    nanos: 0
                }
            )
            .is_err()
        );
        assert!(
            timestamp(
                "t",
                &prost_types::Timestamp {
                    seconds: MAX_SECONDS + 1,
                    nanos: 0
                }
            )
            .is_err()
        );
        assert!(
            timestamp(
                "t",
                &prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1
                }
            )
            .is_err()
        );
    }

    #[test]
    fn states_and_durations() {
        assert_eq!(state("s", 2).unwrap(), TokenState::Disabled);
        assert!(state("s", 0).is_err());
        assert!(state("s", 99).is_err());
        assert!(
            duration(
                "g",
                Some(&prost_types::Duration {
                    seconds: -1,
                    nanos: 0
                })
            )
            .is_err()
        );
        assert_eq!(duration("g", None).unwrap(), std::time::Duration::ZERO);
    }
}
