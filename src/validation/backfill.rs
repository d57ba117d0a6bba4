//! Write-behind of verifiers: when a token with no verifier under the current
//! key is proven (by argon2 for a token issued before verifiers, or by an
//! older key after a key rotation), its verifier under the current key is
//! queued here and written to the store in batches by the same background
//! flusher as last-used times, never on the request path. From then on every
//! replica, after every restart, verifies it without argon2.
//!
//! Each write names what the value was proven against (the argon2id hash, or
//! the older key's verifier) and only lands while the row still holds it, so
//! a Rotate that commits in between is never given the old secret's verifier.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::cache::Matched;
use crate::{
    domain::{TokenId, token::StoredVerifier},
    store::{Expected, Store, VerifierWrite},
};

/// Rows per store call.
const BATCH_ROWS: usize = 500;

/// Verifiers waiting to be written, one per token and slot.
#[derive(Default)]
pub struct VerifierBackfill {
    pending: Mutex<HashMap<(TokenId, Matched), VerifierWrite>>,
}

impl VerifierBackfill {
    /// Queues the verifier of `slot` of token `id`, to be written while the
    /// slot still holds `expected`.
    pub fn record(&self, id: TokenId, slot: Matched, expected: Expected, verifier: StoredVerifier) {
        self.pending.lock().insert(
            (id, slot),
            VerifierWrite {
                id,
                previous: slot == Matched::Previous,
                expected,
                verifier,
            },
        );
    }

    pub fn pending(&self) -> usize {
        self.pending.lock().len()
    }

    /// Writes everything pending; a failed batch is kept for the next attempt.
    pub async fn flush(&self, store: &Store) -> usize {
        let pending: Vec<VerifierWrite> = self.pending.lock().drain().map(|(_, w)| w).collect();
        let mut written = 0;
        for (n, batch) in pending.chunks(BATCH_ROWS).enumerate() {
            match store.write_verifiers(batch).await {
                Ok(rows) => written += rows,
                Err(e) => {
                    tracing::warn!(error = %e, pending = pending.len() - n * BATCH_ROWS, "verifier write-behind failed; will retry");
                    let mut queue = self.pending.lock();
                    for w in &pending[n * BATCH_ROWS..] {
                        let slot = if w.previous {
                            Matched::Previous
                        } else {
                            Matched::Current
                        };
                        // A newer record for the same slot wins.
                        queue.entry((w.id, slot)).or_insert_with(|| w.clone());
                    }
                    break;
                }
            }
        }
        if written > 0 {
            tracing::debug!(written, "verifiers written behind");
        }
        written
    }
}
