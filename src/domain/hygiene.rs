//! The hygiene rules the sweeper applies (`manage::sweeper`): which expiry
//! notices are due for a token, and what auto-disabling an unused token
//! writes. Pure functions of the token, its account's policy and the time.
//!
//! Notices, as users of GitLab's and GitHub's expiry mails expect them: at
//! most one notice per sweep for a token, the nearest one due. A token first
//! seen inside several horizons at once (issued to expire in 2 days under
//! horizons 30d, 7d, 1d; or a sweeper that was down for a while) gets the
//! notice of the nearest horizon it is inside (7d), and the farther ones are
//! settled without an event, so they never fire later. Once the expiry has
//! passed, only `Expired` is due: a notice that the token is about to
//! expire would then be false.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{EventKind, NewEvent, Token, TokenState, token::Actor};

/// One notice a token is due, keyed (with the token and the expiry) in the
/// store so that it is settled exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueNotice {
    /// `ExpiringSoon` or `Expired`.
    pub kind: EventKind,
    /// Seconds before the expiry (0 for `Expired`).
    pub horizon_secs: i64,
    /// Record an event when this notice is settled now; `false` for a
    /// farther horizon passed over for a nearer one.
    pub emit: bool,
    /// The event's detail.
    pub detail: String,
}

/// A duration in its largest whole unit (`90d`, `36h`, `90s`): humantime
/// would say "2months 29days 2h 52m 48s" for 90 days.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".to_owned(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The notices due at `now` for a token expiring at `expires_at` under the
/// notice `horizons`, nearest first; only the first is emitted.
pub fn due_notices(
    expires_at: DateTime<Utc>,
    horizons: &[Duration],
    now: DateTime<Utc>,
) -> Vec<DueNotice> {
    if now >= expires_at {
        return vec![DueNotice {
            kind: EventKind::Expired,
            horizon_secs: 0,
            emit: true,
            detail: format!("expires_at={}", rfc3339(expires_at)),
        }];
    }
    let mut inside: Vec<Duration> = horizons
        .iter()
        .copied()
        .filter(|h| {
            chrono::Duration::from_std(*h)
                .ok()
                .and_then(|h| expires_at.checked_sub_signed(h))
                .is_none_or(|start| now >= start)
        })
        .collect();
    inside.sort_unstable();
    inside.dedup();
    inside
        .into_iter()
        .enumerate()
        .map(|(i, h)| DueNotice {
            kind: EventKind::ExpiringSoon,
            horizon_secs: i64::try_from(h.as_secs()).unwrap_or(i64::MAX),
            emit: i == 0,
            detail: format!("horizon={}; expires_at={}", human(h), rfc3339(expires_at)),
        })
        .collect()
}

/// The state reason of a token disabled for being unused for `after`.
pub fn unused_reason(after: Duration) -> String {
    format!("unused for {}", human(after))
}

/// Whether `token` counts as unused for longer than `after` as of `as_of`:
/// active, and last used (never used: created) before `as_of - after`.
pub fn is_unused(token: &Token, after: Duration, as_of: DateTime<Utc>) -> bool {
    let Some(cutoff) = chrono::Duration::from_std(after)
        .ok()
        .and_then(|a| as_of.checked_sub_signed(a))
    else {
        return false;
    };
    token.state == TokenState::Active && token.last_used_at.unwrap_or(token.created_at) < cutoff
}

/// Auto-disables `token` at `now` for being unused for `after`: the changed
/// record and its `AutoDisabled` event, whose actor is the service.
pub fn auto_disabled(mut token: Token, after: Duration, now: DateTime<Utc>) -> (Token, NewEvent) {
    let reason = unused_reason(after);
    token.state = TokenState::Disabled;
    token.state_reason = reason.clone();
    token.disabled_at = Some(now);
    token.updated_at = now;
    token.updated_by = Actor::SERVICE.to_owned();
    (
        token,
        NewEvent {
            kind: EventKind::AutoDisabled,
            actor: Actor::Service,
            detail: reason,
        },
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(days: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + days * 86_400, 0).unwrap()
    }

    fn token(created: DateTime<Utc>) -> Token {
        use crate::domain::token::SecretHash;
        Token {
            id: crate::domain::TokenId::parse("0123456789abcdef").unwrap(),
            account_id: "acme".into(),
            owner_id: "alice".into(),
            created_by: "alice".into(),
            updated_by: "alice".into(),
            name: "ci".into(),
            description: String::new(),
            modules: vec![],
            api_version: String::new(),
            metadata: Default::default(),
            state: TokenState::Active,
            state_reason: String::new(),
            secret_hash: SecretHash::new("h".into()),
            verifier: None,
            previous_secret: None,
            hint: String::new(),
            created_at: created,
            updated_at: created,
            last_used_at: None,
            expires_at: None,
            disabled_at: None,
            revoked_at: None,
            allowed_cidrs: Vec::new(),
        }
    }

    fn summary(n: &[DueNotice]) -> Vec<(EventKind, i64, bool)> {
        n.iter().map(|d| (d.kind, d.horizon_secs, d.emit)).collect()
    }

    #[test]
    fn nothing_is_due_before_the_farthest_horizon() {
        assert!(due_notices(at(40), &[30 * DAY, 7 * DAY], at(0)).is_empty());
        assert!(due_notices(at(40), &[], at(0)).is_empty());
    }

    #[test]
    fn the_nearest_horizon_inside_is_emitted_and_farther_ones_settled() {
        let h = [30 * DAY, 7 * DAY, DAY];
        // Issued to expire in 2 days: inside 30d and 7d, not 1d.
        let due = due_notices(at(2), &h, at(0));
        assert_eq!(
            summary(&due),
            vec![
                (EventKind::ExpiringSoon, 7 * 86_400, true),
                (EventKind::ExpiringSoon, 30 * 86_400, false),
            ]
        );
        assert!(due[0].detail.starts_with("horizon=7d; expires_at="));
        // Exactly at a horizon's start it is due.
        assert_eq!(
            summary(&due_notices(at(30), &h, at(0))),
            vec![(EventKind::ExpiringSoon, 30 * 86_400, true)]
        );
    }

    #[test]
    fn durations_read_in_their_largest_whole_unit() {
        assert_eq!(human(90 * DAY), "90d");
        assert_eq!(human(Duration::from_secs(36 * 3600)), "36h");
        assert_eq!(human(Duration::from_secs(90)), "90s");
        assert_eq!(human(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn once_expired_only_expired_is_due() {
        let due = due_notices(at(0), &[DAY], at(0));
        assert_eq!(summary(&due), vec![(EventKind::Expired, 0, true)]);
        assert_eq!(due[0].detail, format!("expires_at={}", rfc3339(at(0))));
    }

    #[test]
    fn unused_counts_from_creation_when_never_used() {
        let mut t = token(at(0));
        assert!(!is_unused(&t, 10 * DAY, at(10)));
        assert!(is_unused(&t, 10 * DAY, at(11)));
        t.last_used_at = Some(at(5));
        assert!(!is_unused(&t, 10 * DAY, at(11)));
        t.state = TokenState::Disabled;
        assert!(!is_unused(&t, DAY, at(100)));
        let (d, e) = auto_disabled(token(at(0)), 90 * DAY, at(100));
        assert_eq!(d.state, TokenState::Disabled);
        assert_eq!(d.state_reason, "unused for 90d");
        assert_eq!((e.kind, e.actor), (EventKind::AutoDisabled, Actor::Service));
    }
}
