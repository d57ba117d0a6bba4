//! A positive cache entry: the token's snapshot (what Validate judges and the
//! reply a hit sends) and its verified digests, one slot for the current
//! secret and one for a rotate-grace previous secret.

use super::*;

/// What Validate needs to judge a token, and the reply a hit sends. Up to a
/// million of these live in memory, so the strings share allocations: the
/// identity (account, owner, modules, version) is one shared string, and
/// the reply's verified-token part is encoded once, when the entry is built,
/// by the api layer (`ReplyEncoder`): a hit then sends `valid`, `reason` and
/// a copy of those bytes, with no per-request strings, map or encoder work.
/// The bytes are opaque here: only the api layer knows the wire format.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: TokenId,
    pub state: TokenState,
    pub expires_at: Option<UnixMicros>,
    /// What the token may do as a caller of this service, read once here
    /// rather than from its modules on every RPC it authenticates.
    pub privileges: Privileges,
    pub identity: TokenIdentity,
    /// The ranges of an IP-bound token; `None` (no allocation, one pointer
    /// test per Validate) for an unbound one.
    pub allowed_cidrs: Option<Box<Ranges>>,
    reply: Box<[u8]>,
}

/// The ranges of an IP-bound token. Boxed once more in the snapshot, so
/// that every entry (up to a million) pays one thin pointer for them, null
/// when unbound, rather than a slice's two words.
#[derive(Debug, Clone)]
pub struct Ranges(Box<[Cidr]>);

impl Ranges {
    pub fn as_slice(&self) -> &[Cidr] {
        &self.0
    }
}

/// Encodes the verified-token part of a Validate reply for a token (the api
/// layer's `wire::encode_verified`); given to the cache at start-up.
pub type ReplyEncoder = fn(&ValidationView<'_>) -> Box<[u8]>;

impl Snapshot {
    pub fn of(token: &ValidationView<'_>, encode: ReplyEncoder) -> Self {
        Self {
            id: token.id,
            state: token.state,
            expires_at: token.expires_at.map(UnixMicros::of),
            privileges: Privileges::from_modules(token.modules.iter().map(String::as_str)),
            identity: TokenIdentity::new(
                token.account_id,
                token.owner_id,
                token.modules,
                token.api_version,
            ),
            allowed_cidrs: (!token.allowed_cidrs.is_empty())
                .then(|| Box::new(Ranges(token.allowed_cidrs.into()))),
            reply: encode(token),
        }
    }

    /// Whether `client` may present this token: always for an unbound one;
    /// for a bound one, only from an address in its ranges.
    #[inline]
    pub fn allows(&self, client: super::super::Client) -> bool {
        match &self.allowed_cidrs {
            None => true,
            Some(ranges) => client.is_some_and(|ip| Cidr::any_contains(&ranges.0, ip)),
        }
    }

    /// The encoded verified-token part of a Validate reply (opaque here).
    pub fn reply(&self) -> &[u8] {
        &self.reply
    }

    pub fn account_id(&self) -> &str {
        self.identity.account_id()
    }

    pub fn owner_id(&self) -> &str {
        self.identity.owner_id()
    }

    pub fn api_version(&self) -> &str {
        self.identity.api_version()
    }

    pub fn modules(&self) -> impl Iterator<Item = &str> + Clone {
        self.identity.modules()
    }

    /// Runs on every Validate that names modules.
    pub fn has_modules(&self, required: &[impl AsRef<str>]) -> bool {
        self.identity.has_modules(required)
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
pub(super) fn digests_equal(a: &Digest, b: &Digest) -> bool {
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
pub(super) struct Slot {
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
    pub(super) fn build(
        token: &ValidationView<'_>,
        keyring: &Keyring,
        encode: ReplyEncoder,
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
            snapshot: Snapshot::of(token, encode),
            current,
            previous,
            last_recorded: AtomicI64::new(0),
        }
    }

    /// The same entry with `slot`'s digest now under the current key (after a
    /// value matched under an older one).
    pub(super) fn rekeyed(&self, slot: Matched, digest: Digest) -> Self {
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

    pub(super) fn slots(&self) -> Vec<Slot> {
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

    /// Whether a rotated-out secret is still accepted (its grace runs, or
    /// ran until recently): which of the two a value matched then matters.
    pub fn has_previous(&self) -> bool {
        self.previous.is_some()
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
