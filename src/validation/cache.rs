//! The verified-token cache and its negative caches.
//!
//! A positive entry is keyed by token id and holds a snapshot of what Validate
//! needs (state, account, owner, modules, version, metadata, expiry) plus, for
//! the current secret and a rotate-grace previous one, its keyed verifier (`verifier`): the MAC of the value under the server-held
//! key, as stored beside the argon2id hash. A hit costs one BLAKE3 of ~60 bytes
//! and a constant-time compare; a presented value that does not match a known
//! verifier is a wrong secret, answered from memory too. Because the digest is
//! the stored verifier, entries are built straight from rows: at start-up
//! (warm start), on a miss, and when the change log says a token changed.
//!
//! Tokens issued before verifiers existed have none until their first use: the
//! slot is then unverified, the miss path runs argon2 once, and the digest it
//! proved is kept here (and written behind to the store). Slots carry a tag of
//! the stored hash they belong to, so a refresh keeps a proven digest while its
//! hash is unchanged (or has become the rotate-grace "previous" one).
//!
//! Beside it: remembered failed values (short TTL), briefly-remembered unknown
//! ids, and a per-id failure window that throttles argon2 work on a token id
//! under a wrong-secret flood. All bounded.

use std::{
    collections::{HashSet, hash_map::RandomState},
    hash::BuildHasher,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use quick_cache::sync::Cache;

use super::{
    clock::UnixMicros,
    verifier::{Digest, Keyring},
};
use crate::{
    domain::{
        Principal, Privileges, TokenId, TokenState, TokenValue,
        token::{SecretHash, StoredVerifier, ValidationRecord, ValidationView},
    },
    telemetry::metrics::CountEvictions,
};

/// The positive cache: evictions are counted (`tokend_cache_evictions_total`).
type Entries = Cache<
    TokenId,
    Arc<Entry>,
    quick_cache::UnitWeighter,
    quick_cache::DefaultHashBuilder,
    CountEvictions,
>;

const STRIPES: usize = 1024;

/// Tuning of the cache; see `ValidationConfig` for defaults.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub capacity: usize,
    pub negative_capacity: usize,
    pub negative_ttl: Duration,
    pub unknown_ttl: Duration,
    pub failure_window: Duration,
    pub failures_per_window: u32,
}

/// What Validate needs to judge a token. Up to a million of these live in
/// memory, so the variable-length fields share one allocation, and that
/// allocation is laid out as the protobuf encoding of the verified-token fields
/// of `tokens.v1.ValidateResponse` (3-9: token_id, account_id, owner_id,
/// modules, api_version, metadata, expires_at). A cache hit's response is
/// then `valid` and `reason` followed by a copy of these bytes, with no
/// per-request strings, map or encoder work (see `api::wire`). The accessors
/// read the same bytes back.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: TokenId,
    pub state: TokenState,
    pub expires_at: Option<UnixMicros>,
    /// What the token may do as a caller of this service, read once here
    /// rather than from its modules on every RPC it authenticates.
    pub privileges: Privileges,
    wire: Box<[u8]>,
    /// Where the module fields lie in `wire`, so the module check on every
    /// Validate does not walk the fields before them.
    modules: std::ops::Range<u32>,
}

/// Field numbers in `tokens.v1.ValidateResponse` (proto/tokens/v1/token_service.proto).
mod field {
    pub const TOKEN_ID: u32 = 3;
    pub const ACCOUNT_ID: u32 = 4;
    pub const OWNER_ID: u32 = 5;
    pub const MODULES: u32 = 6;
    pub const API_VERSION: u32 = 7;
    pub const METADATA: u32 = 8;
    pub const EXPIRES_AT: u32 = 9;
    /// Inside a map entry.
    pub const KEY: u32 = 1;
    pub const VALUE: u32 = 2;
}

/// Appends a length-delimited field (a string or an embedded message).
fn put(buf: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

/// The length-delimited fields of an encoded message, in order. Anything else
/// ends the walk: only `Snapshot::of` writes these buffers.
fn fields(mut rest: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (tag, wire_type) = decode_key(&mut rest).ok()?;
        if wire_type != WireType::LengthDelimited {
            return None;
        }
        let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
        let (value, after) = rest.split_at_checked(len)?;
        rest = after;
        Some((tag, value))
    })
}

/// A position in a snapshot's wire bytes. The module fields come right after
/// three ids of bounded length, so they always start and end far below 4 GiB.
fn offset(position: usize) -> u32 {
    u32::try_from(position).unwrap_or(u32::MAX)
}

/// Whole `&str`s went in, so every string field is valid UTF-8.
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

impl Snapshot {
    pub fn of(token: &ValidationView<'_>) -> Self {
        let mut buf = Vec::with_capacity(128);
        put(&mut buf, field::TOKEN_ID, token.id.as_str().as_bytes());
        put(&mut buf, field::ACCOUNT_ID, token.account_id.as_bytes());
        put(&mut buf, field::OWNER_ID, token.owner_id.as_bytes());
        let modules_start = buf.len();
        for m in token.modules {
            put(&mut buf, field::MODULES, m.as_bytes());
        }
        let modules = offset(modules_start)..offset(buf.len());
        if !token.api_version.is_empty() {
            put(&mut buf, field::API_VERSION, token.api_version.as_bytes());
        }
        let mut entry = Vec::new();
        for (k, v) in token.metadata {
            entry.clear();
            put(&mut entry, field::KEY, k.as_bytes());
            put(&mut entry, field::VALUE, v.as_bytes());
            put(&mut buf, field::METADATA, &entry);
        }
        if let Some(t) = token.expires_at {
            let ts = prost_types::Timestamp {
                seconds: t.timestamp(),
                nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
            };
            put(
                &mut buf,
                field::EXPIRES_AT,
                &prost::Message::encode_to_vec(&ts),
            );
        }
        Self {
            id: token.id,
            state: token.state,
            expires_at: token.expires_at.map(UnixMicros::of),
            privileges: Privileges::from_modules(token.modules.iter().map(String::as_str)),
            wire: buf.into_boxed_slice(),
            modules,
        }
    }

    /// The protobuf encoding of `ValidateResponse` fields 3-9 for this token.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    fn all(&self, tag: u32) -> impl Iterator<Item = &[u8]> {
        fields(&self.wire).filter_map(move |(t, v)| (t == tag).then_some(v))
    }

    fn one(&self, tag: u32) -> &str {
        self.all(tag).next().map_or("", text)
    }

    pub fn account_id(&self) -> &str {
        self.one(field::ACCOUNT_ID)
    }

    pub fn owner_id(&self) -> &str {
        self.one(field::OWNER_ID)
    }

    pub fn api_version(&self) -> &str {
        self.one(field::API_VERSION)
    }

    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.module_fields().map(text)
    }

    fn module_fields(&self) -> impl Iterator<Item = &[u8]> {
        let (start, end) = (self.modules.start as usize, self.modules.end as usize);
        fields(self.wire.get(start..end).unwrap_or_default()).map(|(_, m)| m)
    }

    pub fn metadata(&self) -> impl Iterator<Item = (&str, &str)> {
        self.all(field::METADATA).map(|entry| {
            let (mut key, mut value) = ("", "");
            for (tag, v) in fields(entry) {
                match tag {
                    field::KEY => key = text(v),
                    field::VALUE => value = text(v),
                    _ => {}
                }
            }
            (key, value)
        })
    }

    /// Runs on every Validate that names modules: walks only the module
    /// fields and compares bytes.
    pub fn has_modules(&self, required: &[String]) -> bool {
        required
            .iter()
            .all(|r| self.module_fields().any(|m| m == r.as_bytes()))
    }
}

/// An authenticated caller's ids are read from its cache entry.
impl Principal for Entry {
    fn account_id(&self) -> &str {
        self.snapshot.account_id()
    }

    fn owner_id(&self) -> &str {
        self.snapshot.owner_id()
    }
}

/// Redacted: a digest is a MAC of a secret, and has no business in a log line.
impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("tag", &self.tag)
            .field("key", &self.mac.map(|(key, _)| key))
            .finish()
    }
}

/// Constant-time equality of two digests, as four 64-bit words: every hit
/// compares one, and a byte-wise compare costs several times as much.
fn digests_equal(a: &Digest, b: &Digest) -> bool {
    use subtle::ConstantTimeEq;
    let word = |d: &Digest, i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&d[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    };
    bool::from(
        word(a, 0).ct_eq(&word(b, 0))
            & word(a, 1).ct_eq(&word(b, 1))
            & word(a, 2).ct_eq(&word(b, 2))
            & word(a, 3).ct_eq(&word(b, 3)),
    )
}

/// A secret slot: the tag of the stored hash, and the digest of the value that
/// matches it, with the index of the key it is under (0: the current key),
/// once known: from the stored verifier, or proven by argon2.
#[derive(Clone, Copy)]
struct Slot {
    tag: u64,
    mac: Option<(u8, Digest)>,
}

impl Slot {
    /// The slot of `hash`, from its stored verifier or a digest carried over
    /// from the previous entry, preferring the newer key.
    fn of(
        hash: &SecretHash,
        stored: Option<&StoredVerifier>,
        keyring: &Keyring,
        carried: &[Slot],
    ) -> Self {
        let tag = hash.tag();
        let from_row = stored.and_then(|v| keyring.recognise(v));
        let kept = carried.iter().find(|s| s.tag == tag).and_then(|s| s.mac);
        let mac = match (from_row, kept) {
            (Some(row), Some(kept)) if kept.0 < row.0 => Some(kept),
            (row, kept) => row.or(kept),
        };
        Self { tag, mac }
    }

    /// Whether the presented value is the one this slot knows; `None` when the
    /// slot knows no digest yet. `under` computes the value's digest under an
    /// older key, which only rows written before a key rotation need.
    fn check(&self, digest: &Digest, under: &impl Fn(u8) -> Option<Digest>) -> Option<(bool, u8)> {
        let (key, known) = self.mac?;
        let same = if key == 0 {
            digests_equal(&known, digest)
        } else {
            under(key).is_some_and(|d| digests_equal(&known, &d))
        };
        Some((same, key))
    }
}

/// What an entry says of a presented value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// It is the token's value (the slot it matched, and the index of the key
    /// that slot's digest is under).
    Match(Matched, u8),
    /// Every live slot has a known digest and none matches: a wrong secret.
    Mismatch,
    /// It matches no known digest, but a live slot has none yet (a token from
    /// before verifiers): only argon2 can tell.
    Unverified,
}

#[derive(Debug)]
pub struct Entry {
    pub snapshot: Snapshot,
    current: Slot,
    /// Boxed: only tokens inside a rotate grace period have one.
    previous: Option<Box<(Slot, UnixMicros)>>,
    /// Unix second of the last recorded use, so a hot token records its use at
    /// most once a second.
    last_recorded: AtomicI64,
}

/// Which stored secret a presented value matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Matched {
    Current,
    Previous,
}

impl Entry {
    /// Builds an entry for `token`: each slot's digest from its stored
    /// verifier or carried over from `carried`, and `verified` (proven by
    /// argon2 or freshly generated, under the current key) for its slot.
    fn build(
        token: &ValidationView<'_>,
        keyring: &Keyring,
        carried: &[Slot],
        verified: Option<(Matched, Digest)>,
    ) -> Self {
        let mut current = Slot::of(token.secret_hash, token.verifier, keyring, carried);
        let mut previous = token.previous_secret.map(|p| {
            Box::new((
                Slot::of(&p.hash, p.verifier.as_ref(), keyring, carried),
                UnixMicros::of(p.expires_at),
            ))
        });
        match verified {
            Some((Matched::Current, d)) => current.mac = Some((0, d)),
            Some((Matched::Previous, d)) => {
                if let Some(prev) = previous.as_mut() {
                    prev.0.mac = Some((0, d));
                }
            }
            None => {}
        }
        Self {
            snapshot: Snapshot::of(token),
            current,
            previous,
            last_recorded: AtomicI64::new(0),
        }
    }

    /// The same entry with `slot`'s digest now under the current key (after a
    /// value matched under an older one).
    fn rekeyed(&self, slot: Matched, digest: Digest) -> Self {
        let mut current = self.current;
        let mut previous = self.previous.clone();
        match slot {
            Matched::Current => current.mac = Some((0, digest)),
            Matched::Previous => {
                if let Some(prev) = previous.as_mut() {
                    prev.0.mac = Some((0, digest));
                }
            }
        }
        Self {
            snapshot: self.snapshot.clone(),
            current,
            previous,
            last_recorded: AtomicI64::new(self.last_recorded.load(Ordering::Relaxed)),
        }
    }

    fn slots(&self) -> Vec<Slot> {
        let mut v = vec![self.current];
        v.extend(self.previous.as_ref().map(|p| p.0));
        v
    }

    /// Checks a presented value's digest (under the current key) against the
    /// entry's slots, in constant time per compare. The previous slot counts
    /// only while its grace period runs.
    pub fn check(
        &self,
        digest: &Digest,
        under: impl Fn(u8) -> Option<Digest>,
        now: UnixMicros,
    ) -> Check {
        let mut unverified = false;
        match self.current.check(digest, &under) {
            Some((true, key)) => return Check::Match(Matched::Current, key),
            Some((false, _)) => {}
            None => unverified = true,
        }
        if let Some((slot, until)) = self.previous.as_deref()
            && *until > now
        {
            match slot.check(digest, &under) {
                Some((true, key)) => return Check::Match(Matched::Previous, key),
                Some((false, _)) => {}
                None => unverified = true,
            }
        }
        if unverified {
            Check::Unverified
        } else {
            Check::Mismatch
        }
    }

    /// Whether the slot has no known digest (only argon2 can check a value
    /// against it).
    pub fn unverified(&self, slot: Matched) -> bool {
        match slot {
            Matched::Current => self.current.mac.is_none(),
            Matched::Previous => self.previous.as_ref().is_some_and(|p| p.0.mac.is_none()),
        }
    }

    /// Whether the entry can answer every value without argon2.
    pub fn fully_verified(&self) -> bool {
        !self.unverified(Matched::Current) && !self.unverified(Matched::Previous)
    }

    /// Whether this use should be recorded (at most once per second per entry).
    pub fn should_record_use(&self, now_secs: i64) -> bool {
        // Read first: a hot entry (a service's own caller credential) is hit
        // from every core, and an unconditional swap would make each hit write
        // to a cache line that all cores share.
        self.last_recorded.load(Ordering::Relaxed) != now_secs
            && self.last_recorded.swap(now_secs, Ordering::Relaxed) != now_secs
    }
}

pub struct VerifiedCache {
    keyring: Arc<Keyring>,
    entries: Entries,
    failed: Cache<Digest, Instant>,
    unknown: Cache<TokenId, Instant>,
    failures: Cache<TokenId, (Instant, u32)>,
    /// Bumped by every invalidation of an id in the stripe, so a slow miss that
    /// read the store before a mutation committed does not cache stale data.
    generations: Box<[AtomicU64]>,
    /// Singleflight: one verification per stripe of token ids at a time.
    flights: Box<[tokio::sync::Mutex<()>]>,
    /// While a warm start loads rows: the ids changed since it began, whose
    /// loaded rows may be stale and must not be cached.
    loading: parking_lot::Mutex<Option<ChangedDuringLoad>>,
    config: CacheConfig,
    /// Randomly keyed, so nobody can pick ids that pile onto one stripe.
    stripes: RandomState,
}

#[derive(Default)]
struct ChangedDuringLoad {
    ids: HashSet<TokenId>,
    /// The whole cache was cleared: nothing read before can be trusted.
    cleared: bool,
}

impl ChangedDuringLoad {
    fn covers(&self, id: &TokenId) -> bool {
        self.cleared || self.ids.contains(id)
    }
}

impl VerifiedCache {
    pub fn new(config: CacheConfig, keyring: Arc<Keyring>) -> Self {
        Self {
            keyring,
            entries: Entries::with(
                config.capacity.max(16),
                config.capacity.max(16) as u64,
                quick_cache::UnitWeighter,
                quick_cache::DefaultHashBuilder::default(),
                CountEvictions,
            ),
            failed: Cache::new(config.negative_capacity.max(16)),
            unknown: Cache::new(config.negative_capacity.max(16)),
            failures: Cache::new(config.negative_capacity.max(16)),
            generations: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            flights: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            loading: parking_lot::Mutex::new(None),
            config,
            stripes: RandomState::new(),
        }
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn capacity(&self) -> usize {
        self.config.capacity
    }

    fn stripe(&self, id: &TokenId) -> usize {
        (self.stripes.hash_one(id) as usize) % STRIPES
    }

    /// The digest of a presented value under the current verifier key.
    pub fn digest(&self, value: &TokenValue) -> Digest {
        self.keyring.digest(value)
    }

    /// Checks `value` (whose current-key digest is `digest`) against `entry`.
    pub fn check(
        &self,
        entry: &Entry,
        value: &TokenValue,
        digest: &Digest,
        now: UnixMicros,
    ) -> Check {
        entry.check(digest, |key| self.keyring.digest_under(key, value), now)
    }

    pub fn get(&self, id: &TokenId) -> Option<Arc<Entry>> {
        self.entries.get(id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sizes of the negative caches: (failed values, unknown ids, failure windows).
    pub fn negative_len(&self) -> (usize, usize, usize) {
        (self.failed.len(), self.unknown.len(), self.failures.len())
    }

    pub fn generation(&self, id: &TokenId) -> u64 {
        self.generations[self.stripe(id)].load(Ordering::Acquire)
    }

    pub async fn flight(&self, id: &TokenId) -> tokio::sync::MutexGuard<'_, ()> {
        self.flights[self.stripe(id)].lock().await
    }

    /// Caches `entry` unless the token changed since `generation` was read.
    /// Checked again after the insert: a mutation that lands in between either
    /// sees our entry (and replaces it) or bumps the generation first, and
    /// then ours is taken out again. Either way no stale entry stays.
    fn insert_if_unchanged(&self, id: TokenId, entry: &Arc<Entry>, generation: u64) {
        if self.generation(&id) != generation {
            return;
        }
        self.entries.insert(id, Arc::clone(entry));
        if self.generation(&id) != generation {
            self.entries.remove(&id);
        }
    }

    /// Builds the entry of a token just read from the store (keeping digests
    /// proven for hashes still in use) plus `verified`, and caches it unless
    /// the token changed since `generation` was read.
    pub fn fill(
        &self,
        token: &ValidationView<'_>,
        verified: Option<(Matched, Digest)>,
        generation: u64,
    ) -> Arc<Entry> {
        let carried = self.get(&token.id).map(|e| e.slots()).unwrap_or_default();
        let entry = Arc::new(Entry::build(token, &self.keyring, &carried, verified));
        self.insert_if_unchanged(token.id, &entry, generation);
        entry
    }

    /// Replaces `entry` by one whose `slot` digest is under the current key,
    /// after a value matched it under an older key.
    pub fn rekey(&self, id: TokenId, entry: &Entry, slot: Matched, digest: Digest) {
        let generation = self.generation(&id);
        let still_cached = self
            .get(&id)
            .is_some_and(|cached| std::ptr::eq(Arc::as_ptr(&cached), entry));
        if still_cached {
            self.insert_if_unchanged(id, &Arc::new(entry.rekeyed(slot, digest)), generation);
        }
    }

    /// After a committed change on this process: replaces the snapshot (keeping
    /// digests still valid), and records the digest of a freshly generated value.
    pub fn apply(&self, token: &ValidationView<'_>, fresh: Option<Digest>) {
        let stripe = self.stripe(&token.id);
        self.generations[stripe].fetch_add(1, Ordering::AcqRel);
        self.note_change(&token.id);
        self.unknown.remove(&token.id);
        let existing = self.get(&token.id);
        if existing.is_none() && fresh.is_none() {
            return;
        }
        let carried = existing.map(|e| e.slots()).unwrap_or_default();
        let entry = Entry::build(
            token,
            &self.keyring,
            &carried,
            fresh.map(|d| (Matched::Current, d)),
        );
        self.entries.insert(token.id, Arc::new(entry));
    }

    /// Forgets a token (e.g. when another replica changed it).
    pub fn invalidate(&self, id: &TokenId) {
        self.generations[self.stripe(id)].fetch_add(1, Ordering::AcqRel);
        self.note_change(id);
        self.entries.remove(id);
        self.unknown.remove(id);
    }

    /// Forgets everything (e.g. after losing the change feed).
    pub fn clear(&self) {
        for g in self.generations.iter() {
            g.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(loading) = self.loading.lock().as_mut() {
            loading.cleared = true;
        }
        self.entries.clear();
        self.unknown.clear();
    }

    fn note_change(&self, id: &TokenId) {
        if let Some(loading) = self.loading.lock().as_mut() {
            loading.ids.insert(*id);
        }
    }

    /// Starts a warm load: from now on, changed ids are remembered so that
    /// rows the load read before their change are not cached.
    pub fn begin_load(&self) {
        *self.loading.lock() = Some(ChangedDuringLoad::default());
    }

    pub fn end_load(&self) {
        *self.loading.lock() = None;
    }

    /// Caches a token read by the warm load, if its current secret has a
    /// verifier under one of our keys, it is not cached yet, and it has not
    /// changed since the load began. Checked again after the insert, like
    /// `insert_if_unchanged`.
    pub fn load(&self, token: &ValidationRecord) -> bool {
        let changed = |id: &TokenId| self.loading.lock().as_ref().is_some_and(|l| l.covers(id));
        if changed(&token.id) || self.entries.get(&token.id).is_some() {
            return false;
        }
        let entry = Entry::build(&token.view(), &self.keyring, &[], None);
        if entry.unverified(Matched::Current) {
            return false;
        }
        self.entries.insert(token.id, Arc::new(entry));
        if changed(&token.id) {
            self.entries.remove(&token.id);
            return false;
        }
        true
    }

    fn fresh(at: Option<Instant>, ttl: Duration) -> bool {
        at.is_some_and(|t| t.elapsed() < ttl)
    }

    pub fn recently_failed(&self, digest: &Digest) -> bool {
        Self::fresh(self.failed.get(digest), self.config.negative_ttl)
    }

    /// A value that matched no known digest: answered from memory for a while.
    pub fn remember_failed_value(&self, digest: Digest) {
        self.failed.insert(digest, Instant::now());
    }

    /// A value that argon2 rejected: remembered, and counted towards the
    /// id's throttle (only argon2 work needs one).
    pub fn remember_failure(&self, id: TokenId, digest: Digest) {
        self.remember_failed_value(digest);
        let now = Instant::now();
        let (start, count) = match self.failures.get(&id) {
            Some((start, count)) if start.elapsed() < self.config.failure_window => {
                (start, count + 1)
            }
            _ => (now, 1),
        };
        self.failures.insert(id, (start, count));
    }

    /// Whether argon2 work on this id is throttled after repeated failures.
    pub fn throttled(&self, id: &TokenId) -> bool {
        matches!(self.failures.get(id), Some((start, count)) if start.elapsed() < self.config.failure_window && count >= self.config.failures_per_window)
    }

    pub fn recently_unknown(&self, id: &TokenId) -> bool {
        Self::fresh(self.unknown.get(id), self.config.unknown_ttl)
    }

    pub fn remember_unknown(&self, id: TokenId, generation: u64) {
        if self.generation(&id) == generation {
            self.unknown.insert(id, Instant::now());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use chrono::Utc;

    use super::*;
    use crate::domain::{Token, token::PreviousSecret};

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

    pub(crate) fn cache() -> VerifiedCache {
        VerifiedCache::new(config(), keyring(KEY_A))
    }

    fn check(cache: &VerifiedCache, id: &TokenId, v: &TokenValue, now: UnixMicros) -> Check {
        let e = cache.get(id).unwrap();
        cache.check(&e, v, &cache.digest(v), now)
    }

    #[test]
    fn snapshot_packs_and_unpacks_every_field() {
        let v = TokenValue::generate("tk").unwrap();
        let mut t = token(v.id(), "h");
        t.modules = vec!["a:read".into(), "b/*".into()];
        t.metadata = BTreeMap::from([
            ("team".into(), "payments é".into()),
            ("env".into(), String::new()),
        ]);
        let s = Snapshot::of(&t.validation());
        assert_eq!(s.account_id(), "acme");
        assert_eq!(s.owner_id(), "alice");
        assert_eq!(s.api_version(), "v1");
        assert_eq!(s.modules().collect::<Vec<_>>(), vec!["a:read", "b/*"]);
        assert_eq!(
            s.metadata().collect::<Vec<_>>(),
            vec![("env", ""), ("team", "payments é")]
        );
        assert!(s.has_modules(&["b/*".into()]));
        assert!(s.has_modules(&["b/*".into(), "a:read".into()]));
        assert!(s.has_modules(&[]));
        assert!(!s.has_modules(&["c".into()]));
        assert!(!s.has_modules(&["a:read".into(), "c".into()]));
        // Other fields' text is not a module.
        for other in ["acme", "alice", "v1", v.id().as_str()] {
            assert!(!s.has_modules(&[other.into()]), "{other}");
        }
        t.modules.clear();
        t.metadata.clear();
        let empty = Snapshot::of(&t.validation());
        assert_eq!(empty.modules().count(), 0);
        assert!(!empty.has_modules(&["a:read".into()]));
        assert_eq!(empty.metadata().count(), 0);
    }

    #[test]
    fn an_entry_debug_shows_no_digest() {
        let cache = cache();
        let v = TokenValue::generate("tk").unwrap();
        cache.apply(&token(v.id(), "h").validation(), Some(cache.digest(&v)));
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
        cache.fill(&t.validation(), None, g);
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
        cache.fill(&t.validation(), None, g);
        let now = UnixMicros::now();
        assert_eq!(check(&cache, &v.id(), &v, now), Check::Unverified);
        // argon2 proved it: the digest is kept, and survives a refresh of the
        // row that still has no verifier (the write-behind has not landed).
        cache.fill(
            &t.validation(),
            Some((Matched::Current, cache.digest(&v))),
            g,
        );
        cache.apply(&t.validation(), None);
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
        cache.fill(
            &t.validation(),
            Some((Matched::Current, cache.digest(&v))),
            g,
        );
        assert!(cache.get(&v.id()).is_none());
    }

    #[test]
    fn rows_under_an_older_key_match_and_are_rekeyed() {
        let old = VerifiedCache::new(config(), keyring(KEY_A));
        let cache = VerifiedCache::new(config(), keyring(&format!("{KEY_B}\n{KEY_A}")));
        let v = TokenValue::generate("tk").unwrap();
        let mut t = token(v.id(), "h1");
        t.verifier = Some(old.keyring().seal(&v));
        let g = cache.generation(&v.id());
        let e = cache.fill(&t.validation(), None, g);
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
        let other = VerifiedCache::new(config(), keyring(KEY_B));
        other.fill(&t.validation(), None, other.generation(&v.id()));
        assert_eq!(check(&other, &v.id(), &v, now), Check::Unverified);
    }

    #[test]
    fn apply_keeps_digests_of_hashes_still_in_use() {
        let cache = cache();
        let old = TokenValue::generate("tk").unwrap();
        let new = TokenValue::generate_for("tk", old.id()).unwrap();
        let mut t = token(old.id(), "h-old");
        cache.apply(&t.validation(), Some(cache.digest(&old)));
        // Disable: same hash, digest kept, state updated.
        t.state = TokenState::Disabled;
        cache.apply(&t.validation(), None);
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
        cache.apply(&t.validation(), Some(cache.digest(&new)));
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
        cache.apply(&t.validation(), None);
        assert_eq!(check(&cache, &old.id(), &old, now), Check::Mismatch);
    }

    #[test]
    fn a_warm_load_skips_tokens_changed_since_it_began() {
        let cache = cache();
        let sealed = |v: &TokenValue| {
            let mut t = token(v.id(), "h");
            t.verifier = Some(cache.keyring().seal(v));
            t.validation().to_record()
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
            !cache.load(&token(c.id(), "h").validation().to_record()),
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
        cache.apply(&token(v.id(), "h").validation(), Some(cache.digest(&v)));
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
        );
        for _ in 0..1000 {
            let v = TokenValue::generate("tk").unwrap();
            cache.apply(&token(v.id(), "h").validation(), Some(cache.digest(&v)));
        }
        assert!(cache.len() <= 110, "cache grew to {}", cache.len());
    }
}
