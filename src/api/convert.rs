//! Wire <-> domain conversions. Request fields are parsed into domain types
//! and use-case inputs here, at the edge; each failure names the offending
//! field. The handlers in `api` only authenticate, call these, and call the
//! use-case.

use chrono::{DateTime, Utc};

use crate::{
    domain::{
        AccountId, FieldViolation, OwnerId, Token, TokenId, TokenState, TokenValue, fields,
        fields::TokenName,
        page,
        policy::Cidr,
        token::{Event, EventKind},
        token_value::MAX_TOKEN_BYTES,
    },
    error::{Error, Result},
    manage::{EventsInput, IssueInput, RevokeTarget, SearchInput, TextQuery, UpdateInput},
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

pub(super) fn opt_account(field: &str, s: &str) -> Parsed<Option<AccountId>> {
    optional(s, |s| AccountId::parse(field, s))
}

fn opt_owner(field: &str, s: &str) -> Parsed<Option<OwnerId>> {
    optional(s, |s| OwnerId::parse(field, s))
}

fn optional<T>(s: &str, parse: impl FnOnce(&str) -> Parsed<T>) -> Parsed<Option<T>> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse(s).map(Some)
    }
}

/// `page_token` as sent: empty means the first page.
fn page_token(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Issue's fields; an expiry must be after `now`.
pub fn issue_input(r: pb::IssueRequest, now: DateTime<Utc>) -> Result<IssueInput> {
    Ok(IssueInput {
        account_id: opt_account("account_id", &r.account_id)?,
        owner_id: opt_owner("owner_id", &r.owner_id)?,
        name: TokenName::parse("name", &r.name)?,
        description: fields::description("description", &r.description)?,
        modules: fields::modules("modules", &r.modules)?,
        api_version: fields::api_version("api_version", &r.api_version)?,
        metadata: fields::metadata("metadata", &r.metadata)?,
        expires_at: opt_timestamp("expires_at", r.expires_at.as_ref())?
            .map(|t| fields::future_expiry("expires_at", t, now))
            .transpose()?,
        allowed_cidrs: Cidr::parse_list("allowed_cidrs", &r.allowed_cidrs)?,
    })
}

/// Validate's `required_modules`, each a well-formed module name.
pub fn check_required_modules(modules: &[impl AsRef<str>]) -> Result<()> {
    for (i, m) in modules.iter().map(AsRef::as_ref).enumerate() {
        if fields::check_module("required_modules", m).is_err() {
            // Named with its index only when it is wrong: no format! per call.
            fields::check_module(&format!("required_modules[{i}]"), m)?;
        }
    }
    Ok(())
}

/// Update's fields, those its `update_mask` names (at least one); an expiry
/// must be after `now`.
pub fn update_input(r: pb::UpdateRequest, now: DateTime<Utc>) -> Result<UpdateInput> {
    let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        return Err(Error::invalid(
            "update_mask",
            "must name at least one of: name, description, modules, api_version, metadata, expires_at, allowed_cidrs",
        ));
    }
    let mut input = UpdateInput::default();
    for (i, path) in paths.iter().enumerate() {
        match path.as_str() {
            "name" => input.name = Some(TokenName::parse("name", &r.name)?),
            "description" => {
                input.description = Some(fields::description("description", &r.description)?)
            }
            "modules" => input.modules = Some(fields::modules("modules", &r.modules)?),
            "api_version" => {
                input.api_version = Some(fields::api_version("api_version", &r.api_version)?)
            }
            "metadata" => input.metadata = Some(fields::metadata("metadata", &r.metadata)?),
            "expires_at" => {
                let at = opt_timestamp("expires_at", r.expires_at.as_ref())?;
                input.expires_at = Some(
                    at.map(|t| fields::future_expiry("expires_at", t, now))
                        .transpose()?,
                );
            }
            "allowed_cidrs" => {
                input.allowed_cidrs = Some(Cidr::parse_list("allowed_cidrs", &r.allowed_cidrs)?)
            }
            other => {
                return Err(Error::invalid(
                    format!("update_mask.paths[{i}]"),
                    format!("{other:?} is not an updatable field"),
                ));
            }
        }
    }
    Ok(input)
}

/// SetState's target state (active or disabled) and reason.
pub fn set_state_input(r: &pb::SetStateRequest) -> Result<(TokenState, String)> {
    let state = match state("state", r.state)? {
        s @ (TokenState::Active | TokenState::Disabled) => s,
        TokenState::Revoked => {
            return Err(Error::invalid(
                "state",
                "must be STATE_ACTIVE or STATE_DISABLED; use Revoke to revoke",
            ));
        }
    };
    Ok((state, fields::reason("reason", &r.reason)?))
}

/// Revoke's target (an id or a whole token value) and reason.
pub fn revoke_input(r: pb::RevokeRequest) -> Result<(RevokeTarget, String)> {
    let reason = fields::reason("reason", &r.reason)?;
    let target = match r.target {
        None => return Err(Error::invalid("target", "one of id or token is required")),
        Some(pb::revoke_request::Target::Id(id)) => RevokeTarget::Id(token_id("id", &id)?),
        Some(pb::revoke_request::Target::Token(value)) => RevokeTarget::Value(
            TokenValue::parse(&value)
                .map_err(|e| Error::invalid("token", format!("is not a token value: {e}")))?,
        ),
    };
    Ok((target, reason))
}

/// Duplicate's optional new name and ranges (empty: the source's).
pub fn duplicate_input(r: &pb::DuplicateRequest) -> Result<(Option<TokenName>, Vec<Cidr>)> {
    Ok((
        optional(&r.name, |n| TokenName::parse("name", n))?,
        Cidr::parse_list("allowed_cidrs", &r.allowed_cidrs)?,
    ))
}

/// Search's filters: `query` is a whole token value if it parses as one,
/// else a name substring.
pub fn search_input(r: pb::SearchRequest) -> Result<SearchInput> {
    if r.query.len() > MAX_TOKEN_BYTES {
        return Err(Error::invalid("query", "must be at most 512 bytes"));
    }
    let query = optional(&r.query, |q| {
        Ok(match TokenValue::parse(q) {
            Ok(value) => TextQuery::Value(value),
            Err(_) => TextQuery::Name(q.to_owned()),
        })
    })?;
    Ok(SearchInput {
        account_id: opt_account("account_id", &r.account_id)?,
        query,
        states: r
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| state(&format!("states[{i}]"), *s))
            .collect::<Result<_, _>>()?,
        include_revoked: r.include_revoked,
        owner_id: opt_owner("owner_id", &r.owner_id)?,
        created_by: opt_owner("created_by", &r.created_by)?,
        module: optional(&r.module, |m| fields::module("module", m))?,
        created_after: opt_timestamp("created_after", r.created_after.as_ref())?,
        created_before: opt_timestamp("created_before", r.created_before.as_ref())?,
        last_used_before: opt_timestamp("last_used_before", r.last_used_before.as_ref())?,
        last_used_after: opt_timestamp("last_used_after", r.last_used_after.as_ref())?,
        page_size: page::page_size("page_size", r.page_size)?,
        page_token: page_token(r.page_token),
        include_total: r.include_total,
        expires_before: opt_timestamp("expires_before", r.expires_before.as_ref())?,
        expires_after: opt_timestamp("expires_after", r.expires_after.as_ref())?,
        breaks_policy: r.breaks_policy,
        bound: r.bound,
    })
}

/// ListEvents' filters.
pub fn events_input(r: pb::ListEventsRequest) -> Result<EventsInput> {
    Ok(EventsInput {
        token_id: opt_token_id("token_id", &r.token_id)?,
        account_id: opt_account("account_id", &r.account_id)?,
        page_size: page::page_size("page_size", r.page_size)?,
        page_token: page_token(r.page_token),
    })
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
        Reason::IpNotAllowed => pb::Reason::IpNotAllowed,
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
        EventKind::ExpiringSoon => pb::EventKind::ExpiringSoon,
        EventKind::Expired => pb::EventKind::Expired,
        EventKind::AutoDisabled => pb::EventKind::AutoDisabled,
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
        account_id: t.account_id.as_str().to_owned(),
        owner_id: t.owner_id.as_str().to_owned(),
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
        allowed_cidrs: t.allowed_cidrs.iter().map(ToString::to_string).collect(),
    }
}

pub fn event_to_pb(e: &Event) -> pb::Event {
    pb::Event {
        id: e.id,
        token_id: e.token_id.clone(),
        account_id: e.account_id.as_str().to_owned(),
        owner_id: e.owner_id.as_str().to_owned(),
        kind: event_kind_to_pb(e.kind) as i32,
        actor_token_id: e.actor.recorded_id(),
        actor_owner_id: e.actor.owner_id().to_owned(),
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
