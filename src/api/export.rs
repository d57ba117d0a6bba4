//! The audit trail as JSON lines, for `tokend events export`: one event per
//! line with the fields of the API's `Event` message under their proto field
//! names, the kind as its proto enum name and the time in RFC 3339 (UTC,
//! microseconds), e.g.
//!
//! ```text
//! {"account_id":"acme","actor_owner_id":"ops","actor_token_id":"JQQQavrtCuFCnPet","at":"2026-11-22T07:53:44.855787Z","detail":"","id":7,"kind":"EVENT_KIND_ISSUED","owner_id":"alice","token_id":"X1a2B3c4D5e6F7g8"}
//! ```
//!
//! Field names are stable: archives and SIEM parsers depend on them.

use chrono::SecondsFormat;

use super::convert::event_kind_to_pb;
use crate::domain::token::Event;

/// One event as one line of JSON (without the newline).
pub fn event_json_line(e: &Event) -> String {
    serde_json::json!({
        "id": e.id,
        "token_id": e.token_id,
        "account_id": e.account_id.as_str(),
        "owner_id": e.owner_id.as_str(),
        "kind": event_kind_to_pb(e.kind).as_str_name(),
        "actor_token_id": e.actor.recorded_id(),
        "actor_owner_id": e.actor.owner_id(),
        "at": e.at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "detail": e.detail,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::domain::{EventKind, token::Actor};

    #[test]
    fn one_line_with_stable_names() {
        let e = Event {
            id: 7,
            token_id: "X1a2B3c4D5e6F7g8".into(),
            account_id: "acme".into(),
            owner_id: "alice".into(),
            kind: EventKind::Disabled,
            actor: Actor::from_recorded("JQQQavrtCuFCnPet".into(), "ops".into()),
            at: chrono::DateTime::from_timestamp_micros(1_795_334_024_855_787).unwrap(),
            detail: "leaked\nin logs".into(),
        };
        let line = event_json_line(&e);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["kind"], "EVENT_KIND_DISABLED");
        assert_eq!(v["at"], "2026-11-22T07:53:44.855787Z");
        assert_eq!(v["detail"], "leaked\nin logs");
        assert_eq!(v["actor_token_id"], "JQQQavrtCuFCnPet");
    }
}
