//! Unit tests of the Validate cache: snapshots, digests, verifiers under
//! key rotation, warm loads, and the negative caches' TTLs on a manual clock.

#![allow(clippy::unwrap_used)]
use std::collections::BTreeMap;

use chrono::Utc;

use super::*;
use crate::domain::{Token, token::PreviousSecret};
use crate::validation::cache::entry::digests_equal;

const KEY_A: &str = "a:0101010101010101010101010101010101010101010101010101010101010101";
const KEY_B: &str = "b:0202020202020202020202020202020202020202020202020202020202020202";

pub(crate) fn token(id: TokenId, hash: &str) -> Token {
    let now = Utc::now();
    Token {
        id,
        account_id: "acme".into(),
        owner_id: "alice".into(),
        created_by: "alice".into(),
        updated_by: "alice".into(),
        name: "n".into(),
        description: String::new(),
        modules: vec!["a:read".into()],
        api_version: "v1".into(),
        metadata: BTreeMap::new(),
        state: TokenState::Active,
        state_reason: String::new(),
        secret_hash: SecretHash::new(hash.into()),
        verifier: None,
        previous_secret: None,
        hint: String::new(),
        created_at: now,
        updated_at: now,
        last_used_at: None,
        expires_at: None,
        disabled_at: None,
        revoked_at: None,
        allowed_cidrs: Vec::new(),
    }
}

pub(crate) fn config() -> CacheConfig {
    CacheConfig {
        capacity: 1000,
        negative_capacity: 1000,
        negative_ttl: Duration::from_secs(30),
        unknown_ttl: Duration::from_secs(10),
        failure_window: Duration::from_secs(10),
        failures_per_window: 3,
    }
}

pub(crate) fn keyring(text: &str) -> Arc<Keyring> {
    Arc::new(Keyring::parse(text).unwrap())
}

fn with_keys(keys: &str) -> VerifiedCache {
    VerifiedCache::new(config(), keyring(keys), crate::api::wire::encode_verified)
}

pub(crate) fn cache() -> VerifiedCache {
    with_keys(KEY_A)
}

fn check(cache: &VerifiedCache, id: &TokenId, v: &TokenValue, now: UnixMicros) -> Check {
    let e = cache.get(id).unwrap();
    cache.check(&e, v, &cache.digest(v), now)
}

#[test]
fn a_snapshot_reads_its_identity_and_keeps_the_encoded_reply() {
    let v = TokenValue::generate("tk").unwrap();
    let mut t = token(v.id(), "h");
    t.modules = vec!["a:read".into(), "b/*".into()];
    let s = Snapshot::of(&t.view(), |_| Box::new(*b"opaque"));
    assert_eq!(s.account_id(), "acme");
    assert_eq!(s.owner_id(), "alice");
    assert_eq!(s.api_version(), "v1");
    assert_eq!(s.modules().collect::<Vec<_>>(), vec!["a:read", "b/*"]);
    assert!(s.has_modules(&["b/*", "a:read"]));
    assert!(!s.has_modules(&["c"]));
    assert_eq!(s.reply(), b"opaque");
}

#[test]
fn a_snapshot_holds_ranges_only_for_a_bound_token_and_fails_closed() {
    let ip = |s: &str| Some(s.parse().unwrap());
    let v = TokenValue::generate("tk").unwrap();
    let mut t = token(v.id(), "h");
    let unbound = Snapshot::of(&t.view(), |_| Box::new([]));
    assert!(
        unbound.allowed_cidrs.is_none(),
        "no allocation when unbound"
    );
    for client in [None, ip("1.2.3.4")] {
        assert!(unbound.allows(client), "{client:?}");
    }
    t.allowed_cidrs = crate::domain::policy::Cidr::parse_list(
        "allowed_cidrs",
        &["10.0.0.0/8".into(), "2001:db8::/32".into()],
    )
    .unwrap();
    let bound = Snapshot::of(&t.view(), |_| Box::new([]));
    assert_eq!(
        bound.allowed_cidrs.as_ref().unwrap().as_slice(),
        t.allowed_cidrs
    );
    assert!(bound.allows(ip("10.2.3.4")));
    assert!(bound.allows(ip("2001:db8::1")));
    assert!(!bound.allows(ip("11.2.3.4")));
    assert!(!bound.allows(None), "no address: fail closed");
    // One thin pointer per entry for the ranges.
    assert_eq!(
        std::mem::size_of_val(&bound.allowed_cidrs),
        std::mem::size_of::<usize>()
    );
}

#[test]
fn an_entry_debug_shows_no_digest() {
    let cache = cache();
    let v = TokenValue::generate("tk").unwrap();
    cache.apply(&token(v.id(), "h").view(), Some(cache.digest(&v)));
    let shown = format!("{:?}", cache.get(&v.id()).unwrap());
    assert!(shown.contains("key: Some(0)"), "{shown}");
    let digest = format!("{:?}", cache.digest(&v));
    assert!(!shown.contains(&digest[1..digest.len() - 1]), "{shown}");
}

#[test]
fn digests_are_equal_only_when_every_byte_is() {
    let a: Digest = std::array::from_fn(|i| i as u8);
    assert!(digests_equal(&a, &a));
    for i in 0..32 {
        let mut b = a;
        b[i] ^= 0x80;
        assert!(!digests_equal(&a, &b), "byte {i}");
    }
}

#[test]
fn an_entry_built_from_a_row_settles_every_value_without_argon2() {
    let cache = cache();
    let v = TokenValue::generate("tk").unwrap();
    let wrong = TokenValue::generate_for("tk", v.id()).unwrap();
    let mut t = token(v.id(), "h1");
    t.verifier = Some(cache.keyring().seal(&v));
    let g = cache.generation(&v.id());
    cache.fill(&t.view(), None, g);
    let now = UnixMicros::now();
    assert_eq!(
        check(&cache, &v.id(), &v, now),
        Check::Match(Matched::Current, 0)
    );
    assert_eq!(check(&cache, &v.id(), &wrong, now), Check::Mismatch);
}

#[test]
fn a_row_without_a_verifier_needs_argon2_until_one_is_proven() {
    let cache = cache();
    let v = TokenValue::generate("tk").unwrap();
    let t = token(v.id(), "h1");
    let g = cache.generation(&v.id());
    cache.fill(&t.view(), None, g);
    let now = UnixMicros::now();
    assert_eq!(check(&cache, &v.id(), &v, now), Check::Unverified);
    // argon2 proved it: the digest is kept, and survives a refresh of the
    // row that still has no verifier (the write-behind has not landed).
    cache.fill(&t.view(), Some((Matched::Current, cache.digest(&v))), g);
    cache.apply(&t.view(), None);
    assert_eq!(
        check(&cache, &v.id(), &v, now),
        Check::Match(Matched::Current, 0)
    );
}

#[test]
fn a_mutation_between_read_and_fill_prevents_caching() {
    let cache = cache();
    let v = TokenValue::generate("tk").unwrap();
    let t = token(v.id(), "h1");
    let g = cache.generation(&v.id());
    cache.invalidate(&v.id());
    cache.fill(&t.view(), Some((Matched::Current, cache.digest(&v))), g);
    assert!(cache.get(&v.id()).is_none());
}

#[test]
fn rows_under_an_older_key_match_and_are_rekeyed() {
    let old = with_keys(KEY_A);
    let cache = with_keys(&format!("{KEY_B}\n{KEY_A}"));
    let v = TokenValue::generate("tk").unwrap();
    let mut t = token(v.id(), "h1");
    t.verifier = Some(old.keyring().seal(&v));
    let g = cache.generation(&v.id());
    let e = cache.fill(&t.view(), None, g);
    let now = UnixMicros::now();
    assert_eq!(
        check(&cache, &v.id(), &v, now),
        Check::Match(Matched::Current, 1)
    );
    let wrong = TokenValue::generate_for("tk", v.id()).unwrap();
    assert_eq!(check(&cache, &v.id(), &wrong, now), Check::Mismatch);
    cache.rekey(v.id(), &e, Matched::Current, cache.digest(&v));
    assert_eq!(
        check(&cache, &v.id(), &v, now),
        Check::Match(Matched::Current, 0)
    );
    // A key nobody lists any more cannot settle anything.
    let other = with_keys(KEY_B);
    other.fill(&t.view(), None, other.generation(&v.id()));
    assert_eq!(check(&other, &v.id(), &v, now), Check::Unverified);
}

#[test]
fn apply_keeps_digests_of_hashes_still_in_use() {
    let cache = cache();
    let old = TokenValue::generate("tk").unwrap();
    let new = TokenValue::generate_for("tk", old.id()).unwrap();
    let mut t = token(old.id(), "h-old");
    cache.apply(&t.view(), Some(cache.digest(&old)));
    // Disable: same hash, digest kept, state updated.
    t.state = TokenState::Disabled;
    cache.apply(&t.view(), None);
    let e = cache.get(&old.id()).unwrap();
    assert_eq!(e.snapshot.state, TokenState::Disabled);
    let now = UnixMicros::now();
    assert!(matches!(
        check(&cache, &old.id(), &old, now),
        Check::Match(..)
    ));
    // Rotate with grace: old hash becomes previous, its digest follows it.
    t.state = TokenState::Active;
    t.previous_secret = Some(PreviousSecret {
        hash: t.secret_hash.clone(),
        verifier: None,
        expires_at: Utc::now() + chrono::Duration::seconds(60),
    });
    t.secret_hash = SecretHash::new("h-new".into());
    cache.apply(&t.view(), Some(cache.digest(&new)));
    assert_eq!(
        check(&cache, &old.id(), &new, now),
        Check::Match(Matched::Current, 0)
    );
    assert_eq!(
        check(&cache, &old.id(), &old, now),
        Check::Match(Matched::Previous, 0)
    );
    let later = UnixMicros::of(Utc::now() + chrono::Duration::seconds(61));
    assert_eq!(check(&cache, &old.id(), &old, later), Check::Mismatch);
    // Rotate without grace: the old digest is gone.
    t.previous_secret = None;
    cache.apply(&t.view(), None);
    assert_eq!(check(&cache, &old.id(), &old, now), Check::Mismatch);
}

#[test]
fn a_warm_load_skips_tokens_changed_since_it_began() {
    let cache = cache();
    let sealed = |v: &TokenValue| {
        let mut t = token(v.id(), "h");
        t.verifier = Some(cache.keyring().seal(v));
        t.view().to_record()
    };
    let (a, b, c, d) = (
        TokenValue::generate("tk").unwrap(),
        TokenValue::generate("tk").unwrap(),
        TokenValue::generate("tk").unwrap(),
        TokenValue::generate("tk").unwrap(),
    );
    cache.begin_load();
    cache.invalidate(&b.id());
    assert!(cache.load(&sealed(&a)));
    assert!(!cache.load(&sealed(&b)), "changed during the load");
    assert!(
        !cache.load(&token(c.id(), "h").view().to_record()),
        "no verifier"
    );
    cache.clear();
    assert!(!cache.load(&sealed(&d)), "everything changed");
    cache.end_load();
    assert!(cache.load(&sealed(&d)));
    assert!(!cache.load(&sealed(&d)), "already cached");
}

#[test]
fn failures_throttle_after_the_window_limit() {
    let cache = cache();
    let v = TokenValue::generate("tk").unwrap();
    for _ in 0..2 {
        cache.remember_failure(v.id(), [0; 32]);
    }
    assert!(!cache.throttled(&v.id()));
    cache.remember_failed_value([9; 32]);
    assert!(!cache.throttled(&v.id()), "only argon2 failures count");
    cache.remember_failure(v.id(), [1; 32]);
    assert!(cache.throttled(&v.id()));
    assert!(cache.recently_failed(&[1; 32]));
    assert!(cache.recently_failed(&[9; 32]));
    assert!(!cache.recently_failed(&[2; 32]));
}

#[test]
fn unknown_ids_are_forgotten_when_the_token_appears() {
    let cache = cache();
    let v = TokenValue::generate("tk").unwrap();
    cache.remember_unknown(v.id(), cache.generation(&v.id()));
    assert!(cache.recently_unknown(&v.id()));
    cache.apply(&token(v.id(), "h").view(), Some(cache.digest(&v)));
    assert!(!cache.recently_unknown(&v.id()));
}

#[test]
fn capacity_is_bounded() {
    let cache = VerifiedCache::new(
        CacheConfig {
            capacity: 100,
            ..config()
        },
        keyring(KEY_A),
        crate::api::wire::encode_verified,
    );
    for _ in 0..1000 {
        let v = TokenValue::generate("tk").unwrap();
        cache.apply(&token(v.id(), "h").view(), Some(cache.digest(&v)));
    }
    assert!(cache.len() <= 110, "cache grew to {}", cache.len());
}

fn on_manual_clock() -> (VerifiedCache, Clock) {
    let clock = Clock::manual(UnixMicros::of(Utc::now()));
    (cache().with_clock(clock.clone()), clock)
}

#[test]
fn failed_values_are_remembered_for_the_negative_ttl() {
    let (cache, clock) = on_manual_clock();
    cache.remember_failed_value([7; 32]);
    clock.advance(config().negative_ttl - Duration::from_millis(1));
    assert!(cache.recently_failed(&[7; 32]));
    clock.advance(Duration::from_millis(1));
    assert!(!cache.recently_failed(&[7; 32]), "forgotten at the TTL");
}

#[test]
fn unknown_ids_are_remembered_for_the_unknown_ttl() {
    let (cache, clock) = on_manual_clock();
    let v = TokenValue::generate("tk").unwrap();
    cache.remember_unknown(v.id(), cache.generation(&v.id()));
    clock.advance(config().unknown_ttl - Duration::from_millis(1));
    assert!(cache.recently_unknown(&v.id()));
    clock.advance(Duration::from_millis(1));
    assert!(!cache.recently_unknown(&v.id()), "forgotten at the TTL");
}

#[test]
fn the_throttle_lifts_when_the_failure_window_ends() {
    let (cache, clock) = on_manual_clock();
    let v = TokenValue::generate("tk").unwrap();
    for i in 0..3 {
        cache.remember_failure(v.id(), [i; 32]);
    }
    assert!(cache.throttled(&v.id()));
    clock.advance(config().failure_window);
    assert!(!cache.throttled(&v.id()), "the window ended");
    // A failure after the window starts a new count.
    cache.remember_failure(v.id(), [3; 32]);
    assert!(!cache.throttled(&v.id()));
    clock.advance(config().failure_window / 2);
    cache.remember_failure(v.id(), [4; 32]);
    cache.remember_failure(v.id(), [5; 32]);
    assert!(cache.throttled(&v.id()), "three in one window");
}
