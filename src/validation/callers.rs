//! The caller credential of a connection, remembered.
//!
//! Every RPC carries its caller's own tokend token, and a backend service or
//! gateway sends the same one on every request of a long-lived HTTP/2
//! connection. Checking it the full way costs a parse, a keyed BLAKE3 and a
//! cache lookup per call; for the Validate path, whose budget is a no-op RPC,
//! that is a large part of the difference. So each connection keeps a
//! `CallerMemo`: the credential bytes it last authenticated and the cache
//! entry they matched, with a `Mark` of the entry's cache stripe.
//!
//! A later call on the same connection that presents the same bytes
//! (compared in constant time) is the same caller, as long as the mark is
//! unchanged: every change to a token (this process's mutations, the change
//! log's refreshes, a cleared cache) bumps its stripe before and after the
//! entry is replaced, so a revoked, disabled, rotated or updated caller is
//! checked the full way again on its next call. The state and expiry are
//! still judged on every call, and its use is still recorded.
//!
//! Not remembered: a token inside a rotation grace period (which of its two
//! secrets the bytes are, and until when the old one counts, is for the full
//! check to say). The bytes are zeroed when the memo is replaced or the
//! connection closes, and never printed.

use std::{fmt, sync::Arc};

use arc_swap::ArcSwapOption;
use zeroize::Zeroizing;

use super::{
    Client, Reason, Validator,
    cache::{Entry, Mark},
    judge,
};

/// One connection's remembered caller (see the module doc).
#[derive(Default)]
pub struct CallerMemo(ArcSwapOption<Memo>);

struct Memo {
    credential: Zeroizing<Box<[u8]>>,
    entry: Arc<Entry>,
    mark: Mark,
}

impl CallerMemo {
    pub fn new() -> Self {
        Self::default()
    }
}

impl fmt::Debug for CallerMemo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.0.load().is_some();
        f.debug_struct("CallerMemo").field("held", &held).finish()
    }
}

/// Whether `a` and `b` are the same bytes, in time that depends only on
/// their lengths (credentials are secrets). Eight bytes at a time: this runs
/// on every call, and `subtle`'s slice compare goes byte by byte.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    if a.len() != b.len() {
        return false;
    }
    // Whole words by value (no copy into a buffer, which compiles to a
    // memcpy call per chunk), then the tail byte by byte.
    let word = |c: &[u8]| c.try_into().map_or(0, u64::from_le_bytes);
    let (xs, ys) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = xs
        .remainder()
        .iter()
        .zip(ys.remainder())
        .fold(0u64, |acc, (x, y)| acc | u64::from(x ^ y));
    let differ = xs
        .zip(ys)
        .fold(tail, |acc, (x, y)| acc | (word(x) ^ word(y)));
    bool::from(differ.ct_eq(&0))
}

impl Validator {
    /// The caller's entry, when `credential` is the one `memo` remembers,
    /// its token has not changed since, and it is still valid now from `peer`
    /// (a use, recorded as the full check would). `None`: check it the full
    /// way.
    pub fn recall(&self, memo: &CallerMemo, credential: &[u8], peer: Client) -> Option<Arc<Entry>> {
        let guard = memo.0.load();
        let held = guard.as_ref()?;
        if !same_bytes(&held.credential, credential) || !self.cache.unchanged(held.mark) {
            return None;
        }
        let now = self.cache.clock().now();
        if judge(&held.entry, &[] as &[&str], peer, now) != Reason::Valid {
            return None;
        }
        if held.entry.should_record_use(now.secs()) {
            self.usage.record(held.entry.snapshot.id, now.to_datetime());
        }
        Some(Arc::clone(&held.entry))
    }

    /// Remembers that `credential` authenticated as `entry`, whose stripe
    /// stood at `mark` before the entry was read.
    pub fn remember(&self, memo: &CallerMemo, credential: &[u8], entry: Arc<Entry>, mark: Mark) {
        if entry.has_previous() {
            return;
        }
        memo.0.store(Some(Arc::new(Memo {
            credential: Zeroizing::new(credential.into()),
            entry,
            mark,
        })));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;
    use crate::{
        domain::{TokenState, TokenValue},
        store::{Store, StoreConfig},
        validation::{
            backfill::VerifierBackfill,
            cache::tests::{cache, token},
            hasher::{Hasher, HasherConfig},
            usage::UsageRecorder,
        },
    };

    async fn validator() -> Validator {
        let store = Store::connect(&StoreConfig {
            url: "sqlite::memory:".into(),
            max_connections: 1,
            timeout: Duration::from_secs(5),
        })
        .await
        .unwrap();
        let hasher = Hasher::start(&HasherConfig {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
            workers: 1,
            queue: 4,
        })
        .unwrap();
        Validator::new(
            Arc::new(store),
            Arc::new(hasher),
            cache(),
            Arc::new(UsageRecorder::default()),
            Arc::new(VerifierBackfill::default()),
        )
    }

    /// Remembers `value` as the validator's cache has it now.
    fn remember(validator: &Validator, memo: &CallerMemo, value: &TokenValue) {
        let mark = validator.cache().mark(&value.id());
        let entry = validator.cache().get(&value.id()).unwrap();
        validator.remember(memo, value.expose().as_bytes(), entry, mark);
    }

    #[tokio::test]
    async fn recalled_only_for_the_same_bytes_of_an_unchanged_valid_token() {
        let validator = validator().await;
        let value = TokenValue::generate("tk").unwrap();
        let text = value.expose();
        let mut t = token(value.id(), "h");
        validator.apply(&t, Some(&value));
        let memo = CallerMemo::new();
        assert!(
            validator.recall(&memo, text.as_bytes(), None).is_none(),
            "empty"
        );
        remember(&validator, &memo, &value);
        assert_eq!(format!("{memo:?}"), "CallerMemo { held: true }");
        let entry = validator.recall(&memo, text.as_bytes(), None).unwrap();
        assert_eq!(entry.snapshot.id, value.id());
        let mut other = text.clone().into_bytes();
        other[5] ^= 1;
        assert!(validator.recall(&memo, &other, None).is_none());
        assert!(
            validator
                .recall(&memo, &text.as_bytes()[1..], None)
                .is_none()
        );

        // Any change to the token voids the memo, even one that keeps it valid.
        t.name = "renamed".into();
        validator.apply(&t, None);
        assert!(validator.recall(&memo, text.as_bytes(), None).is_none());
        remember(&validator, &memo, &value);
        assert!(validator.recall(&memo, text.as_bytes(), None).is_some());
        validator.cache().invalidate(&value.id());
        assert!(validator.recall(&memo, text.as_bytes(), None).is_none());
        validator.apply(&t, Some(&value));
        remember(&validator, &memo, &value);
        validator.cache().clear();
        assert!(validator.recall(&memo, text.as_bytes(), None).is_none());

        // A state the full check refuses is not recalled either.
        validator.apply(&t, Some(&value));
        remember(&validator, &memo, &value);
        t.state = TokenState::Disabled;
        validator.apply(&t, None);
        assert!(validator.recall(&memo, text.as_bytes(), None).is_none());
    }

    #[tokio::test]
    async fn a_mark_taken_before_a_change_voids_what_is_remembered_after_it() {
        let validator = validator().await;
        let value = TokenValue::generate("tk").unwrap();
        let mut t = token(value.id(), "h");
        validator.apply(&t, Some(&value));
        let memo = CallerMemo::new();
        // The caller's check read the mark, then a change landed, then it
        // remembered the entry it had read: the memo must not hold.
        let mark = validator.cache().mark(&value.id());
        let entry = validator.cache().get(&value.id()).unwrap();
        t.state = TokenState::Revoked;
        validator.apply(&t, None);
        validator.remember(&memo, value.expose().as_bytes(), entry, mark);
        assert!(
            validator
                .recall(&memo, value.expose().as_bytes(), None)
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_token_in_a_rotation_grace_is_not_remembered() {
        let validator = validator().await;
        let value = TokenValue::generate("tk").unwrap();
        let mut t = token(value.id(), "h");
        t.previous_secret = Some(crate::domain::token::PreviousSecret {
            hash: crate::domain::token::SecretHash::new("old".into()),
            verifier: None,
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
        });
        validator.apply(&t, Some(&value));
        let memo = CallerMemo::new();
        remember(&validator, &memo, &value);
        assert!(
            validator
                .recall(&memo, value.expose().as_bytes(), None)
                .is_none()
        );
    }

    #[test]
    fn same_bytes_is_equality() {
        assert!(same_bytes(b"", b""));
        assert!(same_bytes(b"tk_abc", b"tk_abc"));
        assert!(!same_bytes(b"tk_abc", b"tk_abd"));
        assert!(!same_bytes(b"tk_abc", b"tk_ab"));
        assert!(!same_bytes(b"tk_ab", b"tk_abc"));
        let long = b"tk_JQQQavrtCuFCnPet_5TgRw27lmDj7GLjjkWLEl85aWdC7dWo6p24p5r3Rlu5I2b4v2N";
        assert!(same_bytes(long, long));
        for i in 0..long.len() {
            let mut other = *long;
            other[i] ^= 1;
            assert!(!same_bytes(long, &other), "byte {i}");
        }
    }

    #[test]
    fn debug_never_shows_the_credential() {
        let memo = CallerMemo::new();
        assert_eq!(format!("{memo:?}"), "CallerMemo { held: false }");
    }
}
