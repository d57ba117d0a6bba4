//! The Validate core. Validate runs on every request of every backend service,
//! so a cache hit must cost about as little as a no-op RPC:
//!
//! - hit: one keyed BLAKE3 digest, a constant-time compare, and the state,
//!   expiry and module checks on an in-memory snapshot: no store access, no
//!   argon2. A wrong secret for a cached token is answered the same way;
//! - miss: one store read per token id at a time (singleflight), concurrent
//!   misses coalesced into one query (`misses`); the row's
//!   keyed verifier (`verifier`) settles the value with one BLAKE3 and fills
//!   the cache, right or wrong. argon2 runs, on its bounded pool, only for a
//!   row with no verifier under a configured key (issued before verifiers, or
//!   after its key was retired); the verifier it proves is written behind
//!   (`backfill`), so each such token pays argon2 once per deployment;
//! - warm start (`warm`): at start-up the cache is loaded from the store, most
//!   recently used first, before health reports SERVING;
//! - floods: failed values and unknown ids are remembered briefly, and repeated
//!   argon2 failures on one id throttle further argon2 work on it;
//! - last use: recorded in memory and flushed in batches (`usage`).
//!
//! The caller-credential check of every RPC goes through the same path.

pub mod backfill;
pub mod cache;
pub mod callers;
pub mod change_cursor;
pub mod clock;
pub mod coherence;
pub mod hasher;
pub mod key_file;
pub mod misses;
pub mod usage;
pub mod verifier;
pub mod warm;

#[cfg(test)]
mod typo_tests;

use std::{fmt, net::IpAddr, sync::Arc};

use self::{
    backfill::VerifierBackfill,
    cache::{Check, Entry, Matched, VerifiedCache},
    clock::UnixMicros,
    hasher::Hasher,
    misses::MissReader,
    usage::UsageRecorder,
    verifier::Digest,
};
use crate::{
    domain::{Token, TokenState, TokenValue, token::ValidationRecord},
    error::{Error, Result},
    store::{Expected, Store},
    telemetry::metrics,
};

/// Why a token is (not) valid. Mirrors the wire `Reason` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Valid,
    Malformed,
    Unknown,
    Disabled,
    Revoked,
    Expired,
    MissingModules,
    /// An IP-bound token from outside its ranges, or from an unknown address.
    IpNotAllowed,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Valid => "valid",
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::Disabled => "disabled",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::MissingModules => "missing modules",
            Self::IpNotAllowed => "ip not allowed",
        })
    }
}

/// A verdict, with the token's snapshot when its secret verified.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub reason: Reason,
    pub entry: Option<Arc<Entry>>,
    /// Answered from memory, without the store or argon2 (the metrics'
    /// hit/miss split).
    pub hit: bool,
}

impl Verdict {
    pub fn rejected(reason: Reason) -> Self {
        Self {
            reason,
            entry: None,
            hit: true,
        }
    }

    pub fn is_valid(&self) -> bool {
        self.reason == Reason::Valid
    }
}

/// The address of the client a token is presented by, as far as IP binding
/// goes: for a token being validated, the end client the caller names; for a
/// caller's own credential, the TCP peer. `None` when not known: an
/// IP-bound token is then rejected (binding fails closed).
pub type Client = Option<IpAddr>;

fn judge(
    entry: &Entry,
    required_modules: &[impl AsRef<str>],
    client: Client,
    now: UnixMicros,
) -> Reason {
    let s = &entry.snapshot;
    match s.state {
        TokenState::Revoked => Reason::Revoked,
        TokenState::Disabled => Reason::Disabled,
        TokenState::Active if s.expires_at.is_some_and(|t| t <= now) => Reason::Expired,
        // One pointer test for an unbound token.
        TokenState::Active if !s.allows(client) => Reason::IpNotAllowed,
        TokenState::Active if !s.has_modules(required_modules) => Reason::MissingModules,
        TokenState::Active => Reason::Valid,
    }
}

fn throttled() -> Error {
    Error::ResourceExhausted("too many failed verifications for this token id; retry later".into())
}

pub struct Validator {
    store: Arc<Store>,
    hasher: Arc<Hasher>,
    cache: VerifiedCache,
    usage: Arc<UsageRecorder>,
    backfill: Arc<VerifierBackfill>,
    misses: Arc<MissReader>,
}

impl Validator {
    pub fn new(
        store: Arc<Store>,
        hasher: Arc<Hasher>,
        cache: VerifiedCache,
        usage: Arc<UsageRecorder>,
        backfill: Arc<VerifierBackfill>,
    ) -> Self {
        Self {
            misses: MissReader::new(Arc::clone(&store)),
            store,
            hasher,
            cache,
            usage,
            backfill,
        }
    }

    pub fn cache(&self) -> &VerifiedCache {
        &self.cache
    }

    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Judges a parsed token value, as a use of the token: a valid verdict
    /// updates its last-used time. `account` limits which account's tokens
    /// this caller may see (others look unknown); `client` is who presented
    /// it, for IP-bound tokens.
    pub async fn validate(
        &self,
        value: &TokenValue,
        required_modules: &[impl AsRef<str> + Sync],
        account: Option<&str>,
        client: Client,
    ) -> Result<Verdict> {
        let now = self.cache.clock().now();
        let (found, hit) = self.verified(value, now).await?;
        Ok(self.judged(found, hit, value, required_modules, account, client, now))
    }

    /// `validate` when memory alone can answer (a cached entry, or a value
    /// or id recently found wrong), with no await; `None` when the store or
    /// argon2 must be asked: call `validate`. Validate's cache hits run here,
    /// so they never build or move the miss path's state.
    pub fn validate_now(
        &self,
        value: &TokenValue,
        required_modules: &[impl AsRef<str>],
        account: Option<&str>,
        client: Client,
    ) -> Option<Verdict> {
        let now = self.cache.clock().now();
        let (found, hit) = self.known(value, &self.cache.digest(value), now)?;
        Some(self.judged(found, hit, value, required_modules, account, client, now))
    }

    /// The verdict on `value` once its entry (if any) is known: what the
    /// caller's scope lets it see, then the state, expiry, modules and
    /// address checks; a valid use is recorded.
    #[allow(clippy::too_many_arguments)]
    fn judged(
        &self,
        found: Option<Arc<Entry>>,
        hit: bool,
        value: &TokenValue,
        required_modules: &[impl AsRef<str>],
        account: Option<&str>,
        client: Client,
        now: UnixMicros,
    ) -> Verdict {
        let Some(entry) = found else {
            return Verdict {
                hit,
                ..Verdict::rejected(Reason::Unknown)
            };
        };
        if account.is_some_and(|a| entry.snapshot.account_id() != a) {
            return Verdict {
                hit,
                ..Verdict::rejected(Reason::Unknown)
            };
        }
        let reason = judge(&entry, required_modules, client, now);
        if reason == Reason::Valid && entry.should_record_use(now.secs()) {
            self.usage.record(value.id(), now.to_datetime());
        }
        Verdict {
            reason,
            entry: Some(entry),
            hit,
        }
    }

    /// Proof of possession without a use: the token's entry if `value`'s secret
    /// verifies (current, or previous within its grace), whatever its state.
    /// Searching for or revoking a leaked value must not make it look used.
    pub async fn possessed(&self, value: &TokenValue) -> Result<Option<Arc<Entry>>> {
        Ok(self.verified(value, self.cache.clock().now()).await?.0)
    }

    /// The cached entry whose verified digest matches `value`, verifying on a
    /// miss; and whether memory answered (no store read).
    async fn verified(
        &self,
        value: &TokenValue,
        now: UnixMicros,
    ) -> Result<(Option<Arc<Entry>>, bool)> {
        let digest = self.cache.digest(value);
        if let Some(known) = self.known(value, &digest, now) {
            return Ok(known);
        }
        metrics::cache_miss();
        // Boxed: the miss path's state (store read, argon2) is large, and the
        // hit path should not carry and move it on every call.
        Ok((Box::pin(self.miss(value, digest, now)).await?, false))
    }

    /// `verified` from memory alone: the matching entry, or `None` for a
    /// value or id recently found wrong (floods of known-bad values end
    /// here, without touching the slow path); `None` when it cannot tell.
    fn known(
        &self,
        value: &TokenValue,
        digest: &Digest,
        now: UnixMicros,
    ) -> Option<(Option<Arc<Entry>>, bool)> {
        if let Some(settled) = self.hit(value, digest, now) {
            metrics::cache_hit();
            return Some((settled, true));
        }
        (self.cache.recently_failed(digest) || self.cache.recently_unknown(&value.id()))
            .then_some((None, true))
    }

    /// What the cache alone can say: `Some(Some(entry))` for a match,
    /// `Some(None)` for a wrong secret, `None` when it cannot tell.
    fn hit(
        &self,
        value: &TokenValue,
        digest: &Digest,
        now: UnixMicros,
    ) -> Option<Option<Arc<Entry>>> {
        let entry = self.cache.get(&value.id())?;
        self.settle(&entry, value, digest, now)
            .map(|matched| matched.then_some(entry))
    }

    /// `Some(true)` if `value` matches `entry`, `Some(false)` if it certainly
    /// does not, `None` if only argon2 can tell. A match under an older key
    /// (a row written before a key rotation) is re-keyed: the cache entry at
    /// once, the stored verifier behind.
    fn settle(
        &self,
        entry: &Entry,
        value: &TokenValue,
        digest: &Digest,
        now: UnixMicros,
    ) -> Option<bool> {
        match self.cache.check(entry, value, digest, now) {
            Check::Match(slot, key) => {
                if key != 0 {
                    self.rekey(entry, value, slot, key, *digest);
                }
                Some(true)
            }
            Check::Mismatch => Some(false),
            Check::Unverified => None,
        }
    }

    fn rekey(&self, entry: &Entry, value: &TokenValue, slot: Matched, key: u8, digest: Digest) {
        let id = value.id();
        self.cache.rekey(id, entry, slot, digest);
        let keyring = self.cache.keyring();
        if let Some(old) = keyring.seal_under(key, value) {
            self.backfill
                .record(id, slot, Expected::Verifier(old), keyring.seal(value));
        }
    }

    /// The slow path: at most one per token id at a time.
    async fn miss(
        &self,
        value: &TokenValue,
        digest: Digest,
        now: UnixMicros,
    ) -> Result<Option<Arc<Entry>>> {
        let id = value.id();
        let _flight = self.cache.flight(&id).await;
        // Whoever held the flight before us may have settled this id already.
        if let Some(settled) = self.hit(value, &digest, now) {
            return Ok(settled);
        }
        if self.cache.recently_failed(&digest) || self.cache.recently_unknown(&id) {
            return Ok(None);
        }
        // Only argon2 failures count towards the throttle, so a throttled id
        // is one that argon2 must check: refuse before any work.
        if self.cache.throttled(&id) {
            return Err(throttled());
        }
        let generation = self.cache.generation(&id);
        // Only the columns Validate needs (a whole record costs several
        // times as much to decode), read together with concurrent misses.
        let Some(token) = self.misses.read(id).await? else {
            self.cache.remember_unknown(id, generation);
            return Ok(None);
        };
        // The row's verifiers settle the value, right or wrong, and the entry
        // is cached either way: further values for this id are answered from
        // memory, whatever they are.
        let entry = self.cache.fill(&token.view(), None, generation);
        match self.settle(&entry, value, &digest, now) {
            Some(true) => return Ok(Some(entry)),
            Some(false) => {
                self.cache.remember_failed_value(digest);
                return Ok(None);
            }
            None => {}
        }
        self.argon2(value, &token, &entry, digest, generation, now)
            .await
    }

    /// The last resort, for a slot with no verifier under any configured key:
    /// argon2 against the stored hash. A success caches the digest and writes
    /// the verifier behind, so this token never needs argon2 again.
    async fn argon2(
        &self,
        value: &TokenValue,
        token: &ValidationRecord,
        entry: &Entry,
        digest: Digest,
        generation: u64,
        now: UnixMicros,
    ) -> Result<Option<Arc<Entry>>> {
        let id = value.id();
        let mut matched = None;
        if entry.unverified(Matched::Current)
            && self
                .hasher
                .verify(value.secret(), &token.secret_hash)
                .await?
        {
            matched = Some((Matched::Current, &token.secret_hash));
        } else if entry.unverified(Matched::Previous)
            && let Some(previous) = token.live_previous_secret(now.to_datetime())
            && self.hasher.verify(value.secret(), &previous.hash).await?
        {
            matched = Some((Matched::Previous, &previous.hash));
        }
        match matched {
            Some((slot, hash)) => {
                self.backfill.record(
                    id,
                    slot,
                    Expected::Hash(hash.clone()),
                    self.cache.keyring().seal(value),
                );
                Ok(Some(self.cache.fill(
                    &token.view(),
                    Some((slot, digest)),
                    generation,
                )))
            }
            None => {
                self.cache.remember_failure(id, digest);
                Ok(None)
            }
        }
    }

    /// Token `id` changed (the change log says so, whichever replica made the
    /// change): re-read it if cached here, keeping verified digests whose hash
    /// is unchanged; else just mark it changed so no in-flight miss caches
    /// stale data. A failed read evicts the entry.
    pub async fn refresh(&self, id: crate::domain::TokenId) {
        if self.cache.get(&id).is_none() {
            self.cache.invalidate(&id);
            return;
        }
        match self.store.find_validation_record(id).await {
            Ok(Some(token)) => self.cache.apply(&token.view(), None),
            Ok(None) => self.cache.invalidate(&id),
            Err(e) => {
                tracing::warn!(error = %e, token_id = %id, "refresh failed; evicting");
                self.cache.invalidate(&id);
            }
        }
    }

    /// Called by every mutation right after its commit, on the same code path:
    /// once the RPC returns, no Validate on this process can see the old state.
    /// `fresh` is a newly generated value (Issue, Rotate, Duplicate), whose
    /// digest is cached so its first Validate is already a hit.
    pub fn apply(&self, token: &Token, fresh: Option<&TokenValue>) {
        self.cache
            .apply(&token.view(), fresh.map(|v| self.cache.digest(v)));
    }
}
