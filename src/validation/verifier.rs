//! The keyed verifier: a fast MAC of a token's id and secret under a
//! server-held key, stored beside the argon2id hash.
//!
//! argon2id stays the durable hash (a leaked database is useless offline), but
//! it costs ~20 ms of CPU, so a cache miss must not need it. The verifier is a
//! keyed BLAKE3 of the value's `id_secret` bytes under a 256-bit key that never
//! enters the database: with the key, a miss costs one store read and one
//! BLAKE3; without it, the stored verifiers are as useless as the hashes. The
//! Validate cache keeps the same 256-bit MAC, so its entries can be built
//! straight from stored rows (warm start, refresh from the change log), and
//! any change to a stored verifier makes it fail.
//!
//! Keys come from a key file (one or more lines; the first is current, the
//! others are still accepted for reading, so a key can be rotated without
//! reissuing anything). Each key has a short id, stored with each verifier, so
//! a row says which key verifies it.
//!
//! The key material lives in `secrecy` boxes (zeroed on drop, redacted in
//! `Debug`), and what is used is a key derived from it with BLAKE3's
//! `derive_key`, so the same file key is never used for two purposes.

use std::fmt;

use secrecy::{ExposeSecret, SecretBox};

use crate::domain::{TokenValue, token::StoredVerifier};

/// The context string of BLAKE3's key derivation for verifier MACs.
const MAC_CONTEXT: &str = "tokend 2026-12-01 token verifier MAC v1";
/// The context string for the short id derived from a key.
const ID_CONTEXT: &str = "tokend 2026-12-01 verifier key id v1";
/// More keys than this in one file is a mistake, not a rotation.
pub const MAX_KEYS: usize = 16;
/// Longest key id (given or derived).
pub const MAX_KEY_ID_LEN: usize = 32;

/// A verifier MAC as the Validate cache compares it: all 256 bits, so that
/// no part of a stored verifier goes unchecked.
pub type Digest = [u8; 32];

/// Why a key file cannot be used. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error(
        "line {line}: expected `[<id>:]<64 hex digits>` (a 256-bit key; `tokend keygen` makes one)"
    )]
    Malformed { line: usize },
    #[error("line {line}: key id must be 1..={MAX_KEY_ID_LEN} characters of [A-Za-z0-9._-]")]
    BadId { line: usize },
    #[error("line {line}: key id {id:?} appears twice")]
    DuplicateId { line: usize, id: String },
    #[error("no key in the file")]
    Empty,
    #[error("more than {MAX_KEYS} keys in the file")]
    TooMany,
}

/// One verifier key: its id and the derived MAC key.
pub struct VerifierKey {
    id: String,
    mac_key: SecretBox<[u8; 32]>,
}

impl VerifierKey {
    /// A key from its 32 raw bytes, with the given id or the derived one.
    pub fn new(raw: &[u8; 32], id: Option<String>) -> Self {
        let id = id.unwrap_or_else(|| derived_id(raw));
        let mac_key = SecretBox::new(Box::new(blake3::derive_key(MAC_CONTEXT, raw)));
        Self { id, mac_key }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn mac(&self, value: &TokenValue) -> [u8; 32] {
        *blake3::keyed_hash(self.mac_key.expose_secret(), value.id_and_secret()).as_bytes()
    }
}

/// Redacted: only the id is shown.
impl fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A key's short id, derived from it: 8 hex digits.
fn derived_id(raw: &[u8; 32]) -> String {
    hex::encode(&blake3::derive_key(ID_CONTEXT, raw)[..4])
}

fn valid_id(id: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The configured verifier keys: the first is current (new verifiers are made
/// under it), the others verify rows written before a rotation.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<VerifierKey>,
}

impl Keyring {
    /// Parses a key file: one key a line, `[<id>:]<64 hex digits>`; blank lines
    /// and `#` comments are ignored. The first key is current.
    pub fn parse(text: &str) -> Result<Self, KeyFileError> {
        let mut keys: Vec<VerifierKey> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line_no = n + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, hex_key) = match line.rsplit_once(':') {
                Some((id, key)) => {
                    let id = id.trim();
                    if !valid_id(id) {
                        return Err(KeyFileError::BadId { line: line_no });
                    }
                    (Some(id.to_owned()), key.trim())
                }
                None => (None, line),
            };
            let mut raw = [0u8; 32];
            hex::decode_to_slice(hex_key, &mut raw)
                .map_err(|_| KeyFileError::Malformed { line: line_no })?;
            let key = VerifierKey::new(&raw, id);
            // Wipe the stack copy: only the derived key is kept.
            zeroize::Zeroize::zeroize(&mut raw);
            if keys.iter().any(|k| k.id == key.id) {
                return Err(KeyFileError::DuplicateId {
                    line: line_no,
                    id: key.id,
                });
            }
            keys.push(key);
            if keys.len() > MAX_KEYS {
                return Err(KeyFileError::TooMany);
            }
        }
        if keys.is_empty() {
            return Err(KeyFileError::Empty);
        }
        Ok(Self { keys })
    }

    /// A new random key as a key-file line, `<id>:<64 hex digits>`.
    pub fn generate_line() -> String {
        let mut raw = [0u8; 32];
        rand::fill(&mut raw);
        let line = format!("{}:{}", derived_id(&raw), hex::encode(raw));
        zeroize::Zeroize::zeroize(&mut raw);
        line
    }

    pub fn current_id(&self) -> &str {
        &self.keys[0].id
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    /// The position of the key with this id (0 is current).
    pub fn index_of(&self, id: &str) -> Option<u8> {
        self.keys
            .iter()
            .position(|k| k.id == id)
            .and_then(|i| u8::try_from(i).ok())
    }

    /// The verifier to store for a value, under the current key.
    pub fn seal(&self, value: &TokenValue) -> StoredVerifier {
        StoredVerifier {
            key_id: self.keys[0].id.clone(),
            mac: self.keys[0].mac(value),
        }
    }

    /// The verifier a row holds for `value` under key `index` (a row written
    /// before a key rotation), to check that it still holds it.
    pub fn seal_under(&self, index: u8, value: &TokenValue) -> Option<StoredVerifier> {
        let key = self.keys.get(usize::from(index))?;
        Some(StoredVerifier {
            key_id: key.id.clone(),
            mac: key.mac(value),
        })
    }

    /// The cache digest of a value under the current key: every Validate
    /// computes one (one BLAKE3 compression, the value being under 64 bytes).
    pub fn digest(&self, value: &TokenValue) -> Digest {
        self.keys[0].mac(value)
    }

    /// The cache digest under key `index` (a row written before a rotation).
    pub fn digest_under(&self, index: u8, value: &TokenValue) -> Option<Digest> {
        self.keys.get(usize::from(index)).map(|k| k.mac(value))
    }

    /// The cache form of a stored verifier, if one of our keys made it.
    pub fn recognise(&self, stored: &StoredVerifier) -> Option<(u8, Digest)> {
        Some((self.index_of(&stored.key_id)?, stored.mac))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const A: &str = "0101010101010101010101010101010101010101010101010101010101010101";
    const B: &str = "0202020202020202020202020202020202020202020202020202020202020202";

    #[test]
    fn the_first_key_is_current_and_ids_are_derived_or_given() {
        let ring = Keyring::parse(&format!("# rotated 2026-12\nnew:{B}\n\n{A}\n")).unwrap();
        assert_eq!(ring.current_id(), "new");
        let ids: Vec<_> = ring.ids().collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[1].len(), 8);
        assert_eq!(ring.index_of(ids[1]), Some(1));
        // The same key always derives the same id.
        assert_eq!(Keyring::parse(A).unwrap().current_id(), ids[1]);
    }

    #[test]
    fn generated_lines_parse_back_with_their_id() {
        let line = Keyring::generate_line();
        let (id, key) = line.split_once(':').unwrap();
        assert_eq!(key.len(), 64);
        assert_eq!(Keyring::parse(&line).unwrap().current_id(), id);
        assert_eq!(Keyring::parse(key).unwrap().current_id(), id);
        assert_ne!(Keyring::generate_line(), line);
    }

    #[test]
    fn bad_files_are_refused_without_echoing_keys() {
        for (text, expected) in [
            ("", KeyFileError::Empty),
            ("# only a comment", KeyFileError::Empty),
            ("abc", KeyFileError::Malformed { line: 1 }),
            (&format!("{A}0"), KeyFileError::Malformed { line: 1 }),
            (&format!("bad id:{A}"), KeyFileError::BadId { line: 1 }),
            (
                &format!("{A}\n{A}"),
                KeyFileError::DuplicateId {
                    line: 2,
                    id: Keyring::parse(A).unwrap().current_id().to_owned(),
                },
            ),
        ] {
            let err = Keyring::parse(text).unwrap_err();
            assert_eq!(err, expected, "{text:?}");
            assert!(!err.to_string().contains(A));
        }
        let many: Vec<String> = (0..=MAX_KEYS).map(|_| Keyring::generate_line()).collect();
        assert_eq!(
            Keyring::parse(&many.join("\n")).unwrap_err(),
            KeyFileError::TooMany
        );
    }

    #[test]
    fn verifiers_depend_on_key_and_value_and_debug_shows_no_key() {
        let a = Keyring::parse(A).unwrap();
        let b = Keyring::parse(B).unwrap();
        let v = TokenValue::generate("tk").unwrap();
        let w = TokenValue::generate_for("tk", v.id()).unwrap();
        let sealed = a.seal(&v);
        assert_eq!(sealed.key_id, a.current_id());
        assert_eq!(a.recognise(&sealed), Some((0, a.digest(&v))));
        assert_ne!(a.digest(&v), a.digest(&w));
        assert_ne!(a.digest(&v), b.digest(&v));
        assert_eq!(b.recognise(&sealed), None);
        let both = Keyring::parse(&format!("{B}\n{A}")).unwrap();
        assert_eq!(both.recognise(&sealed), Some((1, a.digest(&v))));
        assert_eq!(both.digest_under(1, &v), Some(a.digest(&v)));
        assert_eq!(both.digest_under(2, &v), None);
        let shown = format!("{both:?} {sealed:?}");
        assert!(
            !shown.contains("0101") && !shown.contains("0202"),
            "{shown}"
        );
        assert!(!shown.contains(&hex::encode(sealed.mac)), "{shown}");
    }
}
