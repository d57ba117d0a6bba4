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
    time::Duration,
};

use quick_cache::sync::Cache;

use super::{
    clock::{Clock, Monotonic, UnixMicros},
    verifier::{Digest, Keyring},
};
use crate::{
    domain::{
        Privileges, TokenId, TokenIdentity, TokenState, TokenValue,
        policy::Cidr,
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

mod entry;

pub use self::entry::{Check, Entry, Matched, ReplyEncoder, Snapshot};

const STRIPES: usize = 1024;

/// A stripe's generation at one moment (`VerifiedCache::mark`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    stripe: usize,
    generation: u64,
}

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

pub struct VerifiedCache {
    keyring: Arc<Keyring>,
    encode: ReplyEncoder,
    entries: Entries,
    failed: Cache<Digest, Monotonic>,
    unknown: Cache<TokenId, Monotonic>,
    failures: Cache<TokenId, (Monotonic, u32)>,
    /// Time for the TTLs above and for Validate's expiry checks.
    clock: Clock,
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
    pub fn new(config: CacheConfig, keyring: Arc<Keyring>, encode: ReplyEncoder) -> Self {
        Self {
            keyring,
            encode,
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
            clock: Clock::system(),
        }
    }

    /// The same cache on `clock` (a manual one in tests, so TTLs are tested
    /// by advancing it instead of sleeping).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
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

    /// Where `id`'s stripe stands now. Taken before an entry is read, a mark
    /// that is still `unchanged` later proves the entry is still the token's
    /// current state (every change bumps the stripe before and after it
    /// replaces the entry), without looking the entry up again.
    pub fn mark(&self, id: &TokenId) -> Mark {
        let stripe = self.stripe(id);
        Mark {
            stripe,
            generation: self.generations[stripe].load(Ordering::Acquire),
        }
    }

    /// Whether no change touched the mark's stripe since it was taken.
    pub fn unchanged(&self, mark: Mark) -> bool {
        self.generations
            .get(mark.stripe)
            .is_some_and(|g| g.load(Ordering::Acquire) == mark.generation)
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
        // Nothing cached: no verified digests to carry over.
        let carried = self.get(&token.id).map_or_else(Vec::new, |e| e.slots());
        let entry = Arc::new(Entry::build(
            token,
            &self.keyring,
            self.encode,
            &carried,
            verified,
        ));
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
        // Nothing cached: no verified digests to carry over.
        let carried = existing.map_or_else(Vec::new, |e| e.slots());
        let entry = Entry::build(
            token,
            &self.keyring,
            self.encode,
            &carried,
            fresh.map(|d| (Matched::Current, d)),
        );
        self.entries.insert(token.id, Arc::new(entry));
        // Again after the replacement: a `mark` taken between the first bump
        // and the insert may have gone with the old entry.
        self.generations[stripe].fetch_add(1, Ordering::AcqRel);
    }

    /// Forgets a token (e.g. when another replica changed it).
    pub fn invalidate(&self, id: &TokenId) {
        let stripe = self.stripe(id);
        self.generations[stripe].fetch_add(1, Ordering::AcqRel);
        self.note_change(id);
        self.entries.remove(id);
        self.unknown.remove(id);
        // See `apply`.
        self.generations[stripe].fetch_add(1, Ordering::AcqRel);
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
        // See `apply`.
        for g in self.generations.iter() {
            g.fetch_add(1, Ordering::AcqRel);
        }
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
        let entry = Entry::build(&token.view(), &self.keyring, self.encode, &[], None);
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

    fn fresh(&self, at: Option<Monotonic>, ttl: Duration) -> bool {
        at.is_some_and(|t| t.until(self.clock.elapsed()) < ttl)
    }

    pub fn recently_failed(&self, digest: &Digest) -> bool {
        self.fresh(self.failed.get(digest), self.config.negative_ttl)
    }

    /// A value that matched no known digest: answered from memory for a while.
    pub fn remember_failed_value(&self, digest: Digest) {
        self.failed.insert(digest, self.clock.elapsed());
    }

    /// A value that argon2 rejected: remembered, and counted towards the
    /// id's throttle (only argon2 work needs one).
    pub fn remember_failure(&self, id: TokenId, digest: Digest) {
        self.remember_failed_value(digest);
        let now = self.clock.elapsed();
        let (start, count) = match self.failures.get(&id) {
            Some((start, count)) if start.until(now) < self.config.failure_window => {
                (start, count + 1)
            }
            _ => (now, 1),
        };
        self.failures.insert(id, (start, count));
    }

    /// Whether argon2 work on this id is throttled after repeated failures.
    pub fn throttled(&self, id: &TokenId) -> bool {
        matches!(self.failures.get(id), Some((start, count)) if self.fresh(Some(start), self.config.failure_window) && count >= self.config.failures_per_window)
    }

    pub fn recently_unknown(&self, id: &TokenId) -> bool {
        self.fresh(self.unknown.get(id), self.config.unknown_ttl)
    }

    pub fn remember_unknown(&self, id: TokenId, generation: u64) {
        if self.generation(&id) == generation {
            self.unknown.insert(id, self.clock.elapsed());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
