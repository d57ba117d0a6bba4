//! Cache misses, coalesced: the rows of concurrent misses are read in one
//! store query instead of one query each.
//!
//! After a restart without a warm start, or when a new replica takes traffic,
//! every token's first Validate is a miss. One store round trip per miss
//! costs far more than the row itself (the driver's hop to its connection,
//! statement execution, result framing), so read one at a time the misses
//! ran at a sixth of the cache-hit rate. Here, a miss queues its id; one
//! reader task at a time takes everything queued (up to `MAX_BATCH`) and
//! reads those rows with one `WHERE id IN (...)`, while the next misses queue
//! behind it. Nothing waits for a batch to fill: a lone miss is read at once,
//! and batches grow only as far as misses actually overlap.
//!
//! A batch read is an ordinary read after each miss queued, so the
//! callers' cache generations (taken before queueing) still guard against a
//! change that commits in between.

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::{
    domain::{TokenId, token::ValidationRecord},
    error::{Error, Result},
    store::Store,
};

/// Most ids per read: a bound on the statement's size and on how long the
/// first miss of a batch waits for the others' rows.
const MAX_BATCH: usize = 128;

type Reply = oneshot::Sender<Result<Option<ValidationRecord>>>;

/// Queues misses and reads their rows in batches.
pub struct MissReader {
    store: Arc<Store>,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<(TokenId, Reply)>,
    /// A reader task is running: it will take what is queued.
    reading: bool,
}

impl MissReader {
    pub fn new(store: Arc<Store>) -> Arc<Self> {
        Arc::new(Self {
            store,
            queue: Mutex::default(),
        })
    }

    /// The lean row of token `id`, read with whatever other misses are
    /// waiting.
    pub async fn read(self: &Arc<Self>, id: TokenId) -> Result<Option<ValidationRecord>> {
        let (reply, answer) = oneshot::channel();
        let start_reader = {
            let mut queue = self.queue.lock();
            queue.waiting.push((id, reply));
            !std::mem::replace(&mut queue.reading, true)
        };
        if start_reader {
            // A task of its own, not the caller's future: a client that
            // cancels its call must not strand the misses queued behind it.
            tokio::spawn(Arc::clone(self).drain());
        }
        answer
            .await
            .map_err(|_| Error::Internal("the miss reader stopped".into()))?
    }

    /// Reads batches until the queue is empty.
    async fn drain(self: Arc<Self>) {
        // If a read panics, waiters get an error and the next miss starts
        // a new reader.
        let _reset = ResetOnDrop(&self);
        loop {
            let batch: Vec<(TokenId, Reply)> = {
                let mut queue = self.queue.lock();
                if queue.waiting.is_empty() {
                    queue.reading = false;
                    return;
                }
                let take = queue.waiting.len().min(MAX_BATCH);
                queue.waiting.drain(..take).collect()
            };
            let mut ids: Vec<TokenId> = batch.iter().map(|(id, _)| *id).collect();
            ids.sort_unstable();
            ids.dedup();
            match self.store.find_validation_records(&ids).await {
                Ok(records) => {
                    let mut by_id: HashMap<TokenId, ValidationRecord> =
                        records.into_iter().map(|r| (r.id, r)).collect();
                    // Misses are single-flight per id, so an id is queued
                    // once at a time; should it ever be queued twice, every
                    // waiter still gets the row.
                    let repeats = ids.len() != batch.len();
                    for (id, reply) in batch {
                        let record = if repeats {
                            by_id.get(&id).cloned()
                        } else {
                            by_id.remove(&id)
                        };
                        let _ = reply.send(Ok(record));
                    }
                }
                Err(e) => {
                    for (_, reply) in batch {
                        let _ = reply.send(Err(copy(&e)));
                    }
                }
            }
        }
    }
}

/// If `drain` panics: clears `reading` and drops the waiters (they see an
/// error), so the next miss starts a new reader.
struct ResetOnDrop<'a>(&'a MissReader);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queue = self.0.queue.lock();
            queue.reading = false;
            queue.waiting.clear();
        }
    }
}

/// The same failure for every waiter of a failed batch.
fn copy(e: &Error) -> Error {
    match e {
        Error::Unavailable(fault, detail) => Error::Unavailable(*fault, detail.clone()),
        Error::Database(detail) => Error::Database(detail.clone()),
        other => Error::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_copied_with_its_kind() {
        let e = copy(&Error::Unavailable(
            crate::error::StoreFault::Timeout,
            "slow".into(),
        ));
        assert!(e.is_unavailable());
        assert!(matches!(copy(&Error::Database("x".into())), Error::Database(d) if d == "x"));
    }
}
