//! Last-used tracking: recorded in memory on valid Validates, written to the
//! store in batches by a background flusher, never on the request path.

use std::{
    collections::{HashMap, hash_map::RandomState},
    hash::BuildHasher,
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::backfill::VerifierBackfill;
use crate::{domain::TokenId, store::Store, telemetry::metrics};

const SHARDS: usize = 16;
/// Rows per UPDATE statement (bounded by SQL parameter limits).
const BATCH_ROWS: usize = 500;

type Pending = HashMap<TokenId, DateTime<Utc>>;

/// Pending last-used times, newest per token.
pub struct UsageRecorder {
    shards: Box<[Mutex<Pending>]>,
    hasher: RandomState,
}

impl Default for UsageRecorder {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl UsageRecorder {
    pub fn record(&self, id: TokenId, at: DateTime<Utc>) {
        let shard = (self.hasher.hash_one(id) as usize) % SHARDS;
        let mut pending = self.shards[shard].lock();
        let slot = pending.entry(id).or_insert(at);
        if *slot < at {
            *slot = at;
        }
    }

    /// Takes everything pending.
    pub fn drain(&self) -> Vec<(TokenId, DateTime<Utc>)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(shard.lock().drain());
        }
        out
    }

    /// Puts back a batch whose write failed, so the next flush retries it.
    pub fn restore(&self, batch: &[(TokenId, DateTime<Utc>)]) {
        for (id, at) in batch {
            self.record(*id, *at);
        }
    }

    /// The use of `id` waiting to be written, if any (the sweeper does not
    /// disable a token this process has just seen used).
    pub fn pending_at(&self, id: TokenId) -> Option<DateTime<Utc>> {
        let shard = (self.hasher.hash_one(id) as usize) % SHARDS;
        self.shards[shard].lock().get(&id).copied()
    }

    pub fn pending(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Writes everything pending; a failed batch is kept for the next attempt.
    pub async fn flush(&self, store: &Store) -> usize {
        let started = metrics::timer();
        let pending = self.drain();
        let mut written = 0;
        for (n, batch) in pending.chunks(BATCH_ROWS).enumerate() {
            match store.record_last_used(batch).await {
                Ok(()) => written += batch.len(),
                Err(e) => {
                    metrics::last_used_flush_failed();
                    tracing::warn!(error = %e, pending = pending.len() - n * BATCH_ROWS, "last-used flush failed; will retry");
                    self.restore(&pending[n * BATCH_ROWS..]);
                    break;
                }
            }
        }
        if !pending.is_empty() {
            metrics::last_used_flushed(started);
        }
        written
    }
}

/// Flushes last-used times and written-behind verifiers every `interval`
/// until `shutdown`, then once more.
pub async fn run_flusher(
    usage: Arc<UsageRecorder>,
    backfill: Arc<VerifierBackfill>,
    store: Arc<Store>,
    interval: Duration,
    shutdown: CancellationToken,
) -> crate::error::Result<()> {
    // The first flush is one interval after start, not at once: an immediate
    // tick would race the first Validates and write a lone row early.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                usage.flush(&store).await;
                backfill.flush(&store).await;
            }
            () = shutdown.cancelled() => break,
        }
    }
    let written = usage.flush(&store).await;
    backfill.flush(&store).await;
    tracing::debug!(written, "final last-used flush");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keeps_the_newest_time_per_token() {
        let u = UsageRecorder::default();
        let id = TokenId::parse("0123456789abcdef").unwrap();
        let t1 = Utc::now();
        let t0 = t1 - chrono::Duration::seconds(5);
        u.record(id, t1);
        u.record(id, t0);
        assert_eq!(u.pending(), 1);
        let batch = u.drain();
        assert_eq!(batch, vec![(id, t1)]);
        assert_eq!(u.pending(), 0);
        u.restore(&batch);
        assert_eq!(u.drain(), vec![(id, t1)]);
    }
}
