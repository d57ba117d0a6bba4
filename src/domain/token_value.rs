//! The token value format: `<prefix>_<id>_<secret><checksum>`.
//!
//! - `prefix`: 1..=16 lowercase ASCII letters or digits (default `tk`), so secret
//!   scanners can recognise our tokens.
//! - `id`: 16 base62 characters from 95 random bits; the public identifier used to
//!   find the record and shown in lists.
//! - `secret`: 44 base62 characters from 256 bits of the OS CSPRNG.
//! - `checksum`: CRC32 of everything before it, 6 base62 characters, so typos and
//!   garbage are rejected without touching the store.

use std::fmt;

use arrayvec::ArrayString;
use rand::{TryRngCore, rngs::OsRng};

/// Length of the public id part.
pub const ID_LEN: usize = 16;
/// Length of the secret part (two 128-bit halves, 22 base62 characters each).
pub const SECRET_LEN: usize = 44;
/// Length of the base62 CRC32 checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Longest accepted token value; anything longer is refused before parsing.
pub const MAX_TOKEN_BYTES: usize = 512;
const MAX_PREFIX_LEN: usize = 16;
/// The id carries 95 random bits: 62^16 > 2^95.
const ID_BITS_MASK: u128 = (1u128 << 95) - 1;

/// Why a presented value is not a token of ours. Deliberately coarse: callers
/// only learn "malformed".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedToken {
    #[error("token value is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("token value is not of the form <prefix>_<id>_<secret>")]
    Shape,
    #[error("token value checksum does not match")]
    Checksum,
}

/// The public identifier of a token: 16 base62 ASCII bytes, stored inline (as
/// text, so reading it back cannot fail) so it is `Copy` and cheap as a cache
/// key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(ArrayString<ID_LEN>);

impl TokenId {
    /// Parses an id as it appears in requests and in the store.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == ID_LEN && all_alphanumeric(s.as_bytes()))
            .then(|| ArrayString::from(s).ok().map(Self))
            .flatten()
    }

    fn generate() -> Result<Self, GenerateError> {
        let mut buf = [0u8; 16];
        OsRng.try_fill_bytes(&mut buf)?;
        let n = u128::from_le_bytes(buf) & ID_BITS_MASK;
        Self::parse(&pad_base62(n, ID_LEN)).ok_or(GenerateError::Id)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({})", self.as_str())
    }
}

/// A full token value: public id plus secret. Its `Debug` never shows the secret
/// and it has no `Display`, so it cannot end up in a log line by accident.
/// Stored inline (a value is at most `MAX_VALUE_LEN` bytes): Validate parses
/// two per request, and neither allocates.
#[derive(Clone)]
pub struct TokenValue {
    raw: Inline,
    id: TokenId,
    prefix_len: usize,
}

impl TokenValue {
    /// Parses a presented value, checking shape and checksum. No store access.
    pub fn parse(value: &str) -> Result<Self, MalformedToken> {
        if value.len() > MAX_TOKEN_BYTES {
            return Err(MalformedToken::TooLong);
        }
        // Fixed layout after the prefix: `_`, the id, `_`, secret and checksum.
        // Checked byte by byte at known offsets: this runs twice per Validate.
        let bytes = value.as_bytes();
        let prefix_len = bytes
            .iter()
            .take(MAX_PREFIX_LEN + 1)
            .position(|&b| b == b'_')
            .ok_or(MalformedToken::Shape)?;
        let id_start = prefix_len + 1;
        let rest_start = id_start + ID_LEN + 1;
        if bytes.len() != rest_start + SECRET_LEN + CHECKSUM_LEN
            || bytes[rest_start - 1] != b'_'
            || !valid_prefix(&value[..prefix_len])
            || !all_alphanumeric(&bytes[id_start..rest_start - 1])
            || !all_alphanumeric(&bytes[rest_start..])
        {
            return Err(MalformedToken::Shape);
        }
        let id = TokenId::parse(&value[id_start..rest_start - 1]).ok_or(MalformedToken::Shape)?;
        let (signed, checksum) = value.split_at(value.len() - CHECKSUM_LEN);
        if !checksum_matches(signed, checksum) {
            return Err(MalformedToken::Checksum);
        }
        Ok(Self {
            raw: Inline::from(value).map_err(|_| MalformedToken::Shape)?,
            id,
            prefix_len,
        })
    }

    /// Generates a fresh token value with a new random id.
    pub fn generate(prefix: &str) -> Result<Self, GenerateError> {
        Self::generate_for(prefix, TokenId::generate()?)
    }

    /// Generates a new secret for an existing id (Rotate).
    pub fn generate_for(prefix: &str, id: TokenId) -> Result<Self, GenerateError> {
        if !valid_prefix(prefix) {
            return Err(GenerateError::Prefix);
        }
        let mut buf = [0u8; 32];
        OsRng.try_fill_bytes(&mut buf)?;
        let (a, b) = buf.split_at(16);
        let mut raw = format!("{prefix}_{id}_");
        for half in [a, b] {
            let mut word = [0u8; 16];
            word.copy_from_slice(half);
            raw.push_str(&pad_base62(u128::from_le_bytes(word), SECRET_LEN / 2));
        }
        let checksum = checksum_of(&raw);
        raw.push_str(&checksum);
        Ok(Self {
            raw: Inline::from(&raw).map_err(|_| GenerateError::Prefix)?,
            id,
            prefix_len: prefix.len(),
        })
    }

    pub fn id(&self) -> TokenId {
        self.id
    }

    /// The value with this secret under another id. For benchmarks that seed
    /// many tokens sharing one secret, so that one argon2 hash serves them
    /// all; never for issuing.
    pub fn with_id(&self, id: TokenId) -> Self {
        let mut raw = self.raw;
        // The same length as `self` (only the id and the checksum change),
        // so it fits the capacity as `self` does.
        raw.truncate(self.prefix_len + 1);
        for part in [id.as_str(), "_", self.secret()] {
            raw.push_str(part);
        }
        let checksum = checksum_of(&raw);
        raw.push_str(&checksum);
        Self {
            raw,
            id,
            prefix_len: self.prefix_len,
        }
    }

    /// The id, `_` and the secret: one contiguous slice for the keyed digest
    /// of the validation cache. For digests only, like `secret`.
    pub fn id_and_secret(&self) -> &[u8] {
        let start = self.prefix_len + 1;
        &self.raw.as_bytes()[start..start + ID_LEN + 1 + SECRET_LEN]
    }

    /// The secret part, for hashing and verification only.
    pub fn secret(&self) -> &str {
        let start = self.prefix_len + 1 + ID_LEN + 1;
        &self.raw.as_str()[start..start + SECRET_LEN]
    }

    /// The length of the full value in bytes (it is ASCII).
    pub fn text_len(&self) -> usize {
        self.raw.len()
    }

    /// The full value. Named loudly: it is handed to the caller once, at Issue,
    /// Rotate or Duplicate, and must go nowhere else.
    pub fn expose(&self) -> String {
        self.raw.as_str().to_owned()
    }

    /// The masked form shown in lists: prefix, id and the last 4 characters
    /// (which belong to the checksum, not the secret).
    pub fn hint(&self) -> String {
        let raw = self.raw.as_str();
        let prefix = &raw[..self.prefix_len];
        let tail = &raw[raw.len() - 4..];
        format!("{prefix}_{}_...{tail}", self.id)
    }
}

impl fmt::Debug for TokenValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenValue")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a new value could not be made.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("OS random source failed: {0}")]
    Random(#[from] rand::rand_core::OsError),
    /// Start-up refuses such a prefix; this guards the invariant anyway.
    #[error("the configured token prefix is not valid")]
    Prefix,
    /// The random id did not encode to 16 base62 characters (cannot happen:
    /// ids are 95 bits, and 62^16 > 2^95).
    #[error("a generated token id is not 16 base62 characters")]
    Id,
}

/// The longest well-formed value: the longest prefix and the fixed-size rest.
const MAX_VALUE_LEN: usize = MAX_PREFIX_LEN + 1 + ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;

/// An ASCII string of at most `MAX_VALUE_LEN` bytes, kept in place.
type Inline = ArrayString<MAX_VALUE_LEN>;

/// Whether `prefix` is an acceptable token prefix (also used to check config).
pub fn valid_prefix(prefix: &str) -> bool {
    (1..=MAX_PREFIX_LEN).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn checksum_of(signed: &str) -> String {
    pad_base62(u128::from(crc32fast::hash(signed.as_bytes())), CHECKSUM_LEN)
}

/// Whether every byte is an ASCII letter or digit. Branch-free, so it
/// vectorises: Validate checks ~70 bytes twice per request.
fn all_alphanumeric(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |bad, &b| {
        let digit = b.wrapping_sub(b'0') < 10;
        let letter = (b | 0x20).wrapping_sub(b'a') < 26;
        bad | u8::from(!(digit | letter))
    }) == 0
}

/// Compares numbers rather than text, so the check on every Validate allocates
/// nothing. Equivalent to comparing with `checksum_of`: the checksum is exactly
/// `CHECKSUM_LEN` base62 digits (checked by the caller), zero-padded, and a
/// CRC32 fits in far fewer, so text and number correspond one to one.
fn checksum_matches(signed: &str, checksum: &str) -> bool {
    use subtle::ConstantTimeEq;
    let expected = u64::from(crc32fast::hash(signed.as_bytes()));
    base62::decode(checksum)
        .ok()
        .and_then(|n| u64::try_from(n).ok())
        .is_some_and(|presented| bool::from(presented.ct_eq(&expected)))
}

fn pad_base62(n: u128, width: usize) -> String {
    format!("{:0>width$}", base62::encode(n))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn another_id_with_the_same_secret_parses() {
        let a = TokenValue::generate("tk").unwrap();
        let b = TokenValue::generate("tk").unwrap();
        let c = a.with_id(b.id());
        let parsed = TokenValue::parse(&c.expose()).unwrap();
        assert_eq!(parsed.id(), b.id());
        assert_eq!(parsed.secret(), a.secret());
    }

    #[test]
    fn generated_values_round_trip_and_have_fixed_shape() {
        let v = TokenValue::generate("tk").unwrap();
        let s = v.expose();
        assert_eq!(s.len(), 2 + 1 + ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN);
        let parsed = TokenValue::parse(&s).unwrap();
        assert_eq!(parsed.id(), v.id());
        assert_eq!(parsed.secret(), v.secret());
        assert_eq!(parsed.expose(), s);
    }

    #[test]
    fn the_branch_free_check_agrees_with_std_on_every_byte() {
        for b in 0..=u8::MAX {
            assert_eq!(all_alphanumeric(&[b]), b.is_ascii_alphanumeric(), "{b}");
            assert_eq!(
                all_alphanumeric(&[b'a', b, b'Z']),
                b.is_ascii_alphanumeric()
            );
        }
        assert!(all_alphanumeric(b""));
    }

    #[test]
    fn the_numeric_checksum_check_agrees_with_the_text_form() {
        for _ in 0..1000 {
            let signed = TokenValue::generate("tk").unwrap().expose();
            let signed = &signed[..signed.len() - CHECKSUM_LEN];
            let good = checksum_of(signed);
            assert_eq!(good.len(), CHECKSUM_LEN);
            assert!(checksum_matches(signed, &good));
            let n = base62::decode(&good).unwrap();
            let off_by_one = pad_base62(n + 1, CHECKSUM_LEN);
            assert!(!checksum_matches(signed, &off_by_one));
        }
        assert!(!checksum_matches("tk_x", "zzzzzz"));
    }

    #[test]
    fn every_single_character_typo_is_rejected() {
        let s = TokenValue::generate("tk").unwrap().expose();
        let bytes = s.as_bytes();
        for i in 0..bytes.len() {
            let mut typo = bytes.to_vec();
            typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(typo).unwrap();
            if typo != s {
                assert!(TokenValue::parse(&typo).is_err(), "typo at {i} accepted");
            }
        }
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in [
            "",
            "tk",
            "tk__",
            "tk_abc_def",
            "TK_0123456789abcdef_x",
            &"a".repeat(600),
        ] {
            assert!(TokenValue::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            TokenValue::parse(&"a".repeat(600)).unwrap_err(),
            MalformedToken::TooLong
        );
    }

    #[test]
    fn an_invalid_prefix_makes_no_value() {
        for bad in ["", "TK", &"p".repeat(MAX_PREFIX_LEN + 1)] {
            assert!(matches!(
                TokenValue::generate(bad),
                Err(GenerateError::Prefix)
            ));
        }
    }

    #[test]
    fn separators_only_where_the_layout_puts_them() {
        for prefix in ["t", "tk", &"p".repeat(MAX_PREFIX_LEN)] {
            let s = TokenValue::generate(prefix).unwrap().expose();
            assert_eq!(TokenValue::parse(&s).unwrap().expose(), s);
            for i in 0..s.len() {
                let mut moved = s.clone().into_bytes();
                if moved[i] == b'_' {
                    moved[i] = b'a';
                } else {
                    moved[i] = b'_';
                }
                let moved = String::from_utf8(moved).unwrap();
                assert!(TokenValue::parse(&moved).is_err(), "{prefix}: _ at {i}");
            }
            // One character more or less anywhere changes the layout.
            assert!(TokenValue::parse(&format!("{s}a")).is_err());
            assert!(TokenValue::parse(&s[1..]).is_err());
        }
        let long = format!("{}_x", "p".repeat(MAX_PREFIX_LEN + 1));
        assert!(TokenValue::parse(&long).is_err());
    }

    #[test]
    fn debug_and_hint_never_show_the_secret() {
        let v = TokenValue::generate("tk").unwrap();
        assert!(!format!("{v:?}").contains(v.secret()));
        assert!(!v.hint().contains(v.secret()));
        assert!(v.hint().starts_with(&format!("tk_{}_", v.id())));
    }

    #[test]
    fn ids_and_secrets_are_unique() {
        let a = TokenValue::generate("tk").unwrap();
        let b = TokenValue::generate("tk").unwrap();
        assert_ne!(a.id(), b.id());
        assert_ne!(a.secret(), b.secret());
        let r = TokenValue::generate_for("tk", a.id()).unwrap();
        assert_eq!(r.id(), a.id());
        assert_ne!(r.secret(), a.secret());
    }

    #[test]
    fn prefixes() {
        assert!(valid_prefix("tk"));
        assert!(valid_prefix("acme2"));
        assert!(!valid_prefix(""));
        assert!(!valid_prefix("Tk"));
        assert!(!valid_prefix("t_k"));
        assert!(!valid_prefix(&"a".repeat(17)));
    }

    mod props {
        //! The parser reads values straight off the network: arbitrary text
        //! and near-misses of real values never panic it, and what it accepts
        //! is exactly what was presented. (That a changed character is never
        //! accepted as the token, checksum or not, is `validation::typo_tests`.)
        use proptest::prelude::*;

        use super::*;

        /// Accepted values are the text as presented, split where the format says.
        fn accepted_as_presented(text: &str) -> Result<(), TestCaseError> {
            if let Ok(v) = TokenValue::parse(text) {
                prop_assert_eq!(v.expose(), text);
                prop_assert_eq!(v.text_len(), text.len());
                let signed = &text[..text.len() - CHECKSUM_LEN];
                prop_assert!(signed.ends_with(v.secret()));
                prop_assert!(signed.ends_with(std::str::from_utf8(v.id_and_secret()).unwrap()));
                let id = format!("_{}_", v.id());
                prop_assert!(signed.contains(&id));
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 1000,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn arbitrary_text_never_panics_the_parser(text in ".{0,600}") {
                accepted_as_presented(&text)?;
            }

            #[test]
            fn arbitrary_bytes_never_panic_the_parser(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
                accepted_as_presented(&String::from_utf8_lossy(&bytes))?;
            }

            /// Near-misses reach the checks past the first: real values with
            /// characters replaced, removed or inserted, under any prefix.
            #[test]
            fn edited_values_never_panic_the_parser(
                prefix in "[a-z0-9]{1,16}",
                edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>(), 0u8..3), 0..4),
            ) {
                let mut chars: Vec<char> = TokenValue::generate(&prefix).unwrap().expose().chars().collect();
                for (at, c, how) in edits {
                    let i = at.index(chars.len() + 1);
                    match how {
                        0 if i < chars.len() => chars[i] = c,
                        1 if i < chars.len() => { chars.remove(i); }
                        _ => chars.insert(i, c),
                    }
                }
                accepted_as_presented(&chars.into_iter().collect::<String>())?;
            }
        }
    }
}
