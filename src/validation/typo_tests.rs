//! A valid token value with any one character changed is never accepted.
//!
//! "Accepted" is what `Validator::verified` decides: the value parses, and
//! either the cached entry of its id matches its keyed digest (the stored
//! verifier's path), or argon2 verifies its secret against the stored hash
//! (the path of a row without a verifier). Both are checked for every case,
//! against a token in a rotation grace period, so both secret slots are
//! tried. A changed character is caught by the checksum at parse time; with
//! the checksum recomputed (anyone can: it is a CRC), the value parses and
//! must fail verification instead. The prefix is left out of that second
//! property: it is a label for secret scanners, not part of what is verified
//! (`Keyring` and argon2 see the id and the secret only).

#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use chrono::{Duration, Utc};
use proptest::prelude::*;

use super::{
    cache::{
        Check, VerifiedCache,
        tests::{cache, token},
    },
    clock::UnixMicros,
    hasher::{Hasher, HasherConfig},
};
use crate::domain::{
    TokenValue,
    token::{PreviousSecret, SecretHash},
    token_value::CHECKSUM_LEN,
};

/// Cases per property (each hashes two secrets with cheap argon2 parameters).
const CASES: u32 = 512;

/// One argon2 pool for the whole module, at parameters cheap enough for many cases.
fn hasher() -> &'static Hasher {
    static HASHER: OnceLock<Hasher> = OnceLock::new();
    HASHER.get_or_init(|| {
        Hasher::start(&HasherConfig {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            workers: 1,
            queue: 64,
        })
        .unwrap()
    })
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// A token just rotated: its current value, the previous one (still in its
/// grace period), their stored hashes, and a cache holding its entry built
/// from the row's verifiers.
struct Issued {
    current: TokenValue,
    previous: TokenValue,
    hashes: [SecretHash; 2],
    cache: VerifiedCache,
}

fn issue(prefix: &str) -> Issued {
    let previous = TokenValue::generate(prefix).unwrap();
    let current = TokenValue::generate_for(prefix, previous.id()).unwrap();
    let hashes = block_on(async {
        [
            hasher().hash(current.secret()).await.unwrap(),
            hasher().hash(previous.secret()).await.unwrap(),
        ]
    });
    let cache = cache();
    let mut t = token(current.id(), hashes[0].as_phc());
    t.verifier = Some(cache.keyring().seal(&current));
    t.previous_secret = Some(PreviousSecret {
        hash: hashes[1].clone(),
        verifier: Some(cache.keyring().seal(&previous)),
        expires_at: Utc::now() + Duration::hours(1),
    });
    cache.apply(&t.view(), None);
    Issued {
        current,
        previous,
        hashes,
        cache,
    }
}

/// Whether the service's checks accept `text` as the issued token.
fn accepted(text: &str, issued: &Issued) -> bool {
    let Ok(value) = TokenValue::parse(text) else {
        return false;
    };
    let cache = &issued.cache;
    let by_verifier = cache.get(&value.id()).is_some_and(|entry| {
        matches!(
            cache.check(&entry, &value, &cache.digest(&value), UnixMicros::now()),
            Check::Match(..)
        )
    });
    let by_argon2 = value.id() == issued.current.id()
        && block_on(async {
            let mut any = false;
            for hash in &issued.hashes {
                any |= hasher().verify(value.secret(), hash).await.unwrap();
            }
            any
        });
    by_verifier || by_argon2
}

/// `text` with the character at `at` replaced by `c`.
fn replace(text: &str, at: usize, c: char) -> String {
    text.chars()
        .enumerate()
        .map(|(i, old)| if i == at { c } else { old })
        .collect()
}

/// `text` with its checksum made to match its new content.
fn with_checksum(text: &str) -> String {
    let signed = &text[..text.len() - CHECKSUM_LEN];
    let crc = base62::encode(crc32fast::hash(signed.as_bytes()));
    format!("{signed}{crc:0>width$}", width = CHECKSUM_LEN)
}

/// The characters a value's id and secret are made of.
fn alphanumeric() -> impl Strategy<Value = char> {
    prop::sample::select(
        ('0'..='9')
            .chain('A'..='Z')
            .chain('a'..='z')
            .collect::<Vec<_>>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        // A failure is kept as a unit test, not in a file beside src/.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_value_with_one_character_changed_is_never_accepted(
        prefix in "[a-z0-9]{1,16}",
        previous in any::<bool>(),
        at in any::<prop::sample::Index>(),
        c in any::<char>(),
    ) {
        let issued = issue(&prefix);
        let real = if previous { &issued.previous } else { &issued.current }.expose();
        prop_assert!(accepted(&real, &issued), "the issued value itself must pass");
        let at = at.index(real.len());
        prop_assume!(real.chars().nth(at) != Some(c));
        let changed = replace(&real, at, c);
        prop_assert!(!accepted(&changed, &issued), "{c:?} at {at} accepted");
    }

    #[test]
    fn a_changed_id_or_secret_with_a_matching_checksum_is_never_accepted(
        prefix in "[a-z0-9]{1,16}",
        previous in any::<bool>(),
        at in any::<prop::sample::Index>(),
        c in prop_oneof![4 => alphanumeric(), 1 => any::<char>()],
    ) {
        let issued = issue(&prefix);
        let real = if previous { &issued.previous } else { &issued.current }.expose();
        // From the id's first character to the secret's last (separator included).
        let start = prefix.len() + 1;
        let at = start + at.index(real.len() - CHECKSUM_LEN - start);
        prop_assume!(real.chars().nth(at) != Some(c));
        let changed = with_checksum(&replace(&real, at, c));
        if c.is_ascii_alphanumeric() && real.as_bytes()[at] != b'_' {
            // The case this property is for: it reaches verification.
            prop_assert!(TokenValue::parse(&changed).is_ok(), "{changed:?} did not parse");
        }
        prop_assert!(!accepted(&changed, &issued), "{c:?} at {at} accepted");
    }
}
