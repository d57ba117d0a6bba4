//! WatchEvents: audit events delivered as they commit, resumable by id.
//!
//! Each watcher is one task with a cursor (the id of the last event it
//! queued). It reads the events after its cursor from the table, oldest
//! first and a batch at a time, queues them for the client, and when it has
//! caught up waits for the store's commit signal (local commits and, on
//! PostgreSQL, every replica's change notifications), with a poll as a
//! fallback. The store makes ids visible in commit order (`store::watch`), so
//! the cursor never skips an event, and nothing is ever queued twice.
//!
//! Memory per watcher is bounded by its queue (`buffer` events): the events
//! themselves stay in the table until read. A client that leaves the queue
//! full for `lag_timeout` is ended with the id to resume after, after the
//! events already queued, so resuming there loses and repeats nothing.

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    domain::{Caller, EventKind, Privilege, token::Event},
    error::{Error, Result},
    store::{EventFilter, Store},
};

/// Events read from the table per query.
const BATCH: u64 = 256;

#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Events queued per watcher before it counts as lagging.
    pub buffer: usize,
    /// How long a full queue is tolerated before the client is told to resume.
    pub lag_timeout: Duration,
    /// Fallback poll when no commit signal arrives (e.g. a lost notification).
    pub poll_interval: Duration,
}

/// A WatchEvents request, parsed.
#[derive(Debug, Clone, Default)]
pub struct WatchInput {
    pub account_id: Option<String>,
    pub kinds: Vec<EventKind>,
    /// Resume after this id; `None`: from now on.
    pub after_id: Option<i64>,
}

/// How a stream ends, with the id to resume after.
#[derive(Debug)]
pub enum WatchEnd {
    /// The client did not keep up.
    Lagged { resume_after: i64 },
    /// The store failed (e.g. unreachable).
    Failed { error: Error, resume_after: i64 },
    /// The server is shutting down (the drain ends every watch).
    Stopped { resume_after: i64 },
}

/// Every watch of this process: their bounds, and the signal that ends them
/// all when the server drains (an open stream would otherwise hold the
/// graceful shutdown forever).
pub struct Watchers {
    config: WatchConfig,
    stop: CancellationToken,
}

impl Watchers {
    pub fn new(config: WatchConfig) -> Self {
        Self {
            config,
            stop: CancellationToken::new(),
        }
    }

    /// Ends every watch (each is told where to resume); new ones are refused.
    pub fn stop_all(&self) {
        self.stop.cancel();
    }

    pub async fn start(
        &self,
        store: &Arc<Store>,
        caller: &Caller,
        input: WatchInput,
    ) -> Result<mpsc::Receiver<WatchItem>> {
        if self.stop.is_cancelled() {
            return Err(Error::Unavailable(
                crate::error::StoreFault::Unreachable,
                "the server is shutting down".into(),
            ));
        }
        start(store, caller, input, &self.config, self.stop.clone()).await
    }
}

/// One item of a watch stream.
pub type WatchItem = std::result::Result<Event, WatchEnd>;

/// Which events `caller` may watch, as asked.
fn filter(caller: &Caller, input: &WatchInput) -> Result<EventFilter> {
    let p = caller.privileges;
    let account_id = if p.has(Privilege::Platform) {
        input.account_id.clone()
    } else if p.has(Privilege::Admin) {
        match &input.account_id {
            Some(a) if a != caller.account_id() => {
                return Err(Error::PermissionDenied(
                    "tokens:admin may watch only its own account's events".into(),
                ));
            }
            _ => Some(caller.account_id().to_owned()),
        }
    } else {
        return Err(Error::PermissionDenied(
            "WatchEvents requires tokens:admin or tokens:platform".into(),
        ));
    };
    Ok(EventFilter {
        account_id,
        kinds: input.kinds.clone(),
    })
}

/// Authorises the watch, fixes its starting point, and starts its task; the
/// stream ends when the receiver is dropped (the client went away).
async fn start(
    store: &Arc<Store>,
    caller: &Caller,
    input: WatchInput,
    config: &WatchConfig,
    stop: CancellationToken,
) -> Result<mpsc::Receiver<WatchItem>> {
    let filter = filter(caller, &input)?;
    store.follow_remote_events();
    // Subscribed before the first read, so no commit after it goes unnoticed.
    let signal = store.event_signal();
    let cursor = match input.after_id {
        Some(id) => id,
        None => store.last_event_id().await?,
    };
    let (tx, rx) = mpsc::channel(config.buffer.max(1));
    tokio::spawn(run(
        Arc::clone(store),
        filter,
        cursor,
        config.clone(),
        signal,
        tx,
        stop,
    ));
    Ok(rx)
}

async fn run(
    store: Arc<Store>,
    filter: EventFilter,
    mut cursor: i64,
    config: WatchConfig,
    mut signal: tokio::sync::watch::Receiver<u64>,
    tx: mpsc::Sender<WatchItem>,
    stop: CancellationToken,
) {
    use mpsc::error::SendTimeoutError;
    loop {
        if stop.is_cancelled() {
            // Best effort: a client that does not read is not waited for.
            let _ = tx.try_send(Err(WatchEnd::Stopped {
                resume_after: cursor,
            }));
            return;
        }
        signal.borrow_and_update();
        let batch = match store.events_after(cursor, &filter, BATCH).await {
            Ok(batch) => batch,
            Err(error) => {
                error.log();
                let _ = tx
                    .send(Err(WatchEnd::Failed {
                        error,
                        resume_after: cursor,
                    }))
                    .await;
                return;
            }
        };
        let full = batch.len() as u64 == BATCH;
        for event in batch {
            let id = event.id;
            match tx.send_timeout(Ok(event), config.lag_timeout).await {
                Ok(()) => cursor = id,
                Err(SendTimeoutError::Closed(_)) => return,
                Err(SendTimeoutError::Timeout(_)) => {
                    // Queued after what the client has not read yet: it
                    // reads those first, then where to resume.
                    let _ = tx
                        .send(Err(WatchEnd::Lagged {
                            resume_after: cursor,
                        }))
                        .await;
                    return;
                }
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            _ = signal.changed() => {}
            _ = tokio::time::sleep(config.poll_interval) => {}
            _ = tx.closed() => return,
            _ = stop.cancelled() => {}
        }
    }
}
