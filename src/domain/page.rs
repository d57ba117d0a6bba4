//! Opaque page tokens for keyset pagination. A page token records where the
//! previous page ended and a fingerprint of the filters it was made for, so a
//! token replayed with other filters is refused instead of silently skipping rows.

use std::fmt::Write as _;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, SecondsFormat, Utc};

use super::{FieldViolation, TokenId, TokenState, privilege::Scope};

pub const DEFAULT_PAGE_SIZE: u64 = 50;
pub const MAX_PAGE_SIZE: u64 = 500;

/// Parses a requested page size: 0 means the default.
pub fn page_size(field: &str, requested: i32) -> Result<u64, FieldViolation> {
    match u64::try_from(requested) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) if n <= MAX_PAGE_SIZE => Ok(n),
        _ => Err(FieldViolation::new(
            field,
            format!("must be between 0 (default {DEFAULT_PAGE_SIZE}) and {MAX_PAGE_SIZE}"),
        )),
    }
}

/// A fingerprint of a listing's filters.
pub fn fingerprint(canonical_filters: &str) -> u64 {
    super::fingerprint64(canonical_filters.as_bytes())
}

/// The canonical text of a listing's filters, fields separated by `|`, each
/// written by hand (never through `Debug`), so a derive or a dependency
/// upgrade cannot change it and invalidate the page tokens in flight across
/// a deploy. The form is the one earlier releases produced through `Debug`
/// for the values the api accepts, so tokens made by them stay valid; a
/// unit test pins it.
#[derive(Debug, Default)]
pub struct Filters(String);

impl Filters {
    fn next(&mut self) -> &mut String {
        if !self.0.is_empty() {
            self.0.push('|');
        }
        &mut self.0
    }

    /// A quoted string, `"` and `\` escaped.
    fn quote(out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            if matches!(c, '"' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }

    fn optional<T>(out: &mut String, v: Option<T>, write: impl FnOnce(&mut String, T)) {
        match v {
            None => out.push_str("None"),
            Some(v) => {
                out.push_str("Some(");
                write(out, v);
                out.push(')');
            }
        }
    }

    pub fn scope(mut self, scope: &Scope) -> Self {
        let out = self.next();
        match scope {
            Scope::Everything => out.push_str("Everything"),
            Scope::Account(a) => {
                out.push_str("Account(");
                Self::quote(out, a);
                out.push(')');
            }
            Scope::Owner {
                account_id,
                owner_id,
            } => {
                out.push_str("Owner { account_id: ");
                Self::quote(out, account_id);
                out.push_str(", owner_id: ");
                Self::quote(out, owner_id);
                out.push_str(" }");
            }
        }
        self
    }

    /// An optional string filter.
    pub fn text(mut self, v: Option<&str>) -> Self {
        Self::optional(self.next(), v, Self::quote);
        self
    }

    /// A field already in canonical form.
    pub fn raw(mut self, v: &str) -> Self {
        self.next().push_str(v);
        self
    }

    pub fn states(mut self, states: &[TokenState]) -> Self {
        let out = self.next();
        out.push('[');
        for (i, s) in states.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(match s {
                TokenState::Active => "Active",
                TokenState::Disabled => "Disabled",
                TokenState::Revoked => "Revoked",
            });
        }
        out.push(']');
        self
    }

    /// An optional instant: RFC 3339 in UTC, with as many fractional digits
    /// (0, 3, 6 or 9) as it needs.
    pub fn time(mut self, t: Option<DateTime<Utc>>) -> Self {
        Self::optional(self.next(), t, |out, t| {
            out.push_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        });
        self
    }

    pub fn token_id(mut self, id: Option<TokenId>) -> Self {
        Self::optional(self.next(), id, |out, id| {
            let _ = write!(out, "TokenId({id})");
        });
        self
    }

    pub fn fingerprint(&self) -> u64 {
        fingerprint(&self.0)
    }
}

/// Position after the last token of a page (tokens are listed newest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCursor {
    pub created_at: DateTime<Utc>,
    pub id: TokenId,
}

impl TokenCursor {
    pub fn encode(&self, filters: u64) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "t1.{}.{}.{filters:016x}",
            self.created_at.timestamp_micros(),
            self.id
        ))
    }

    pub fn decode(field: &str, token: &str, filters: u64) -> Result<Self, FieldViolation> {
        let bad = || {
            FieldViolation::new(
                field,
                "is not a page token of this search (filters must stay the same between pages)",
            )
        };
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let mut parts = raw.split('.');
        let (Some("t1"), Some(micros), Some(id), Some(fp), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        if u64::from_str_radix(fp, 16).map_err(|_| bad())? != filters {
            return Err(bad());
        }
        let created_at =
            DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
        Ok(Self {
            created_at,
            id: TokenId::parse(id).ok_or_else(bad)?,
        })
    }
}

/// Position after the last event of a page (events are listed newest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventCursor {
    pub id: i64,
}

impl EventCursor {
    pub fn encode(&self, filters: u64) -> String {
        URL_SAFE_NO_PAD.encode(format!("e1.{}.{filters:016x}", self.id))
    }

    pub fn decode(field: &str, token: &str, filters: u64) -> Result<Self, FieldViolation> {
        let bad = || {
            FieldViolation::new(
                field,
                "is not a page token of this event listing (filters must stay the same between pages)",
            )
        };
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let mut parts = raw.split('.');
        let (Some("e1"), Some(id), Some(fp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if u64::from_str_radix(fp, 16).map_err(|_| bad())? != filters {
            return Err(bad());
        }
        Ok(Self {
            id: id.parse().map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn filter_fingerprints_are_pinned() {
        use chrono::TimeZone;
        let at = Utc.timestamp_opt(1_700_000_000, 123_456_000).unwrap();
        let f = Filters::default()
            .scope(&Scope::Owner {
                account_id: "acme".into(),
                owner_id: "alice".into(),
            })
            .text(Some("acme"))
            .raw("name:ci")
            .states(&[TokenState::Active, TokenState::Disabled])
            .text(None)
            .time(Some(at))
            .time(Some(Utc.timestamp_opt(1_700_000_000, 0).unwrap()))
            .token_id(TokenId::parse("0123456789abcdef"));
        // The text earlier releases fingerprinted (through Debug): a page
        // token made before a deploy must still be accepted after it.
        assert_eq!(
            f.0,
            r#"Owner { account_id: "acme", owner_id: "alice" }|Some("acme")|name:ci|[Active, Disabled]|None|Some(2023-11-14T22:13:20.123456Z)|Some(2023-11-14T22:13:20Z)|Some(TokenId(0123456789abcdef))"#
        );
        assert_eq!(f.fingerprint(), 0xb315_ed39_7d74_f593);
        let legacy = format!(
            "{:?}|{:?}|name:ci|{:?}|{:?}|{:?}|{:?}|{:?}",
            Scope::Owner {
                account_id: "acme".into(),
                owner_id: "alice".into()
            },
            Some("acme"),
            [TokenState::Active, TokenState::Disabled],
            None::<String>,
            Some(at),
            Some(Utc.timestamp_opt(1_700_000_000, 0).unwrap()),
            TokenId::parse("0123456789abcdef"),
        );
        assert_eq!(f.0, legacy, "the same text as the Debug form it replaces");
        assert_eq!(Filters::default().scope(&Scope::Everything).0, "Everything");
        assert_eq!(
            Filters::default().scope(&Scope::Account("a\"b".into())).0,
            r#"Account("a\"b")"#
        );
    }

    #[test]
    fn cursors_round_trip_and_bind_filters() {
        let c = TokenCursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: TokenId::parse("0123456789abcdef").unwrap(),
        };
        let fp = fingerprint("account=acme");
        let s = c.encode(fp);
        assert_eq!(TokenCursor::decode("page_token", &s, fp).unwrap(), c);
        assert!(TokenCursor::decode("page_token", &s, fingerprint("account=other")).is_err());
        assert!(TokenCursor::decode("page_token", "garbage!", fp).is_err());
        let e = EventCursor { id: 42 };
        assert_eq!(
            EventCursor::decode("page_token", &e.encode(fp), fp).unwrap(),
            e
        );
        assert!(EventCursor::decode("page_token", &s, fp).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(page_size("page_size", 0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size("page_size", 500).unwrap(), 500);
        assert!(page_size("page_size", 501).is_err());
        assert!(page_size("page_size", -1).is_err());
    }

    mod props {
        //! Page tokens come back from clients: arbitrary text never panics
        //! the decoders, and every cursor survives a round trip bound to its
        //! filters.
        use proptest::prelude::*;

        use super::*;

        fn decode_both(token: &str, filters: u64) {
            let _ = TokenCursor::decode("page_token", token, filters);
            let _ = EventCursor::decode("page_token", token, filters);
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 1000,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn arbitrary_text_never_panics_the_decoders(token in ".{0,200}", filters in any::<u64>()) {
                decode_both(&token, filters);
            }

            /// The base64 layer stops most garbage; this feeds the text inside.
            #[test]
            fn arbitrary_inner_text_never_panics_the_decoders(
                inner in prop_oneof![
                    ".{0,120}",
                    "[te]1\\.[-+0-9a-zA-Z.]{0,60}",
                    prop::collection::vec(any::<u8>(), 0..120)
                        .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
                ],
                filters in any::<u64>(),
            ) {
                decode_both(&URL_SAFE_NO_PAD.encode(&inner), filters);
            }

            #[test]
            fn token_cursors_round_trip_bound_to_their_filters(
                micros in DateTime::<Utc>::MIN_UTC.timestamp_micros()..=DateTime::<Utc>::MAX_UTC.timestamp_micros(),
                id in "[0-9A-Za-z]{16}",
                filters in any::<u64>(),
                other in any::<u64>(),
            ) {
                let c = TokenCursor {
                    created_at: DateTime::from_timestamp_micros(micros).unwrap(),
                    id: TokenId::parse(&id).unwrap(),
                };
                let s = c.encode(filters);
                prop_assert_eq!(TokenCursor::decode("page_token", &s, filters).unwrap(), c);
                prop_assert_eq!(TokenCursor::decode("page_token", &s, other).is_ok(), other == filters);
                prop_assert!(EventCursor::decode("page_token", &s, filters).is_err());
            }

            #[test]
            fn event_cursors_round_trip_bound_to_their_filters(
                id in any::<i64>(),
                filters in any::<u64>(),
                other in any::<u64>(),
            ) {
                let e = EventCursor { id };
                let s = e.encode(filters);
                prop_assert_eq!(EventCursor::decode("page_token", &s, filters).unwrap(), e);
                prop_assert_eq!(EventCursor::decode("page_token", &s, other).is_ok(), other == filters);
                prop_assert!(TokenCursor::decode("page_token", &s, filters).is_err());
            }
        }
    }
}
