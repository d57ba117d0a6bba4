//! Cross-replica cache coherence (PostgreSQL). Another replica's commit must
//! reach this replica's Validate cache within a second:
//!
//! - push: a dedicated LISTEN connection receives each change's NOTIFY
//!   (sent on commit) and refreshes that token at once;
//! - pull: NOTIFY is not durable, so the change log is also polled every
//!   `poll_interval` (and right after the listener reconnects): rows after the
//!   highest sequence seen, plus the sequence numbers skipped so far, because a
//!   transaction that took its number earlier may commit later (skipped numbers
//!   are forgotten after `lookback`: by then they were rolled back);
//! - if polling has been failing for longer than the lookback window, the log
//!   can no longer prove nothing was missed, so the cache is cleared before it
//!   is trusted again.
//!
//! A refresh re-reads the token and replaces the snapshot, keeping verified
//! digests whose hash is unchanged (so a disable costs no argon2 anywhere);
//! tokens this replica has not cached are only marked changed. A replica also
//! refreshes on its own changes: one cheap read, and it heals the case where
//! its own write timed out but committed later. Each change is applied once,
//! by whichever of NOTIFY and the poll brings it first.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Validator, change_cursor::ChangeCursor};
use crate::{
    error::{Error, Result},
    health::FollowerStatus,
    store::{FeedEvent, Store},
    telemetry::metrics::{self, Delivery},
};

/// Change rows read per poll; a full batch is followed by another at once.
const BATCH: u64 = 10_000;

#[derive(Debug, Clone)]
pub struct CoherenceConfig {
    pub poll_interval: Duration,
    pub lookback: Duration,
    pub retention: Duration,
}

/// Runs until `shutdown`; a no-op on SQLite (one replica only). `status`
/// learns when the listener is connected and the log caught up (health).
/// Returns an error if the listener or the poll stops before `shutdown`, so
/// the supervisor restarts the follower.
pub async fn run(
    store: Arc<Store>,
    validator: Arc<Validator>,
    config: CoherenceConfig,
    shutdown: CancellationToken,
    status: Arc<FollowerStatus>,
) -> Result<()> {
    if !store.is_shared() {
        return Ok(());
    }
    let kick = Arc::new(Notify::new());
    let seen = Arc::new(Seen::default());
    let mut listener = tokio::spawn(listen(
        Arc::clone(&store),
        Arc::clone(&validator),
        Arc::clone(&kick),
        Arc::clone(&seen),
        shutdown.clone(),
        Arc::clone(&status),
    ));
    let mut poller = tokio::spawn(poll(
        store,
        validator,
        config,
        kick,
        seen,
        shutdown.clone(),
        status,
    ));
    let stopped = tokio::select! {
        r = &mut listener => { poller.abort(); ("change listener", r) }
        r = &mut poller => { listener.abort(); ("change-log poll", r) }
    };
    match stopped {
        _ if shutdown.is_cancelled() => Ok(()),
        (what, Ok(())) => Err(Error::Internal(format!("{what} stopped"))),
        (what, Err(e)) => Err(Error::Internal(format!("{what} failed: {e}"))),
    }
}

/// Sequence numbers already applied, by whichever path (NOTIFY or poll) got
/// there first, so each change is refreshed once: a second, redundant refresh
/// could fail during an outage and evict an entry that is already right.
#[derive(Default)]
struct Seen(parking_lot::Mutex<HashMap<i64, Instant>>);

impl Seen {
    /// True the first time `seq` is offered.
    fn first(&self, seq: i64) -> bool {
        self.0.lock().insert(seq, Instant::now()).is_none()
    }

    fn forget_older_than(&self, age: Duration) {
        self.0.lock().retain(|_, at| at.elapsed() < age);
    }
}

async fn listen(
    store: Arc<Store>,
    validator: Arc<Validator>,
    kick: Arc<Notify>,
    seen: Arc<Seen>,
    shutdown: CancellationToken,
    status: Arc<FollowerStatus>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut connections = 0u64;
    loop {
        let mut listener = tokio::select! {
            () = shutdown.cancelled() => return,
            r = store.listen() => match r {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "change listener cannot connect; retrying");
                    tokio::select! { () = shutdown.cancelled() => return, () = tokio::time::sleep(backoff) => {} }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(100);
        status.listener_up();
        connections += 1;
        if connections > 1 {
            metrics::listener_reconnected();
        }
        // Anything committed while we were not listening is in the log.
        kick.notify_one();
        tracing::debug!("change listener connected");
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                r = listener.next() => match r {
                    Ok(FeedEvent::Changed(row)) => {
                        if let Some(id) = row.token_id
                            && seen.first(row.seq)
                        {
                            validator.refresh(id).await;
                            metrics::change_applied(row.seq, Delivery::Notify);
                        }
                    }
                    Ok(FeedEvent::Lost) => {
                        // Reconnect here rather than inside `try_recv`, so health
                        // knows when the connection is back.
                        tracing::warn!("change listener lost its connection; reconnecting, then catching up from the log");
                        status.listener_down();
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "change listener failed; reconnecting");
                        status.listener_down();
                        break;
                    }
                },
            }
        }
    }
}

async fn poll(
    store: Arc<Store>,
    validator: Arc<Validator>,
    config: CoherenceConfig,
    kick: Arc<Notify>,
    seen: Arc<Seen>,
    shutdown: CancellationToken,
    status: Arc<FollowerStatus>,
) {
    // Start from the log's current end: the cache is empty at start-up (the
    // warm start, which waits for this follower, reads the rows as they are).
    let mut cursor = loop {
        match store.last_change_seq().await {
            Ok(seq) => break ChangeCursor::new(seq),
            Err(e) => tracing::warn!(error = %e, "cannot read the change log yet"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.poll_interval) => {}
        }
    };
    let mut last_ok = Instant::now();
    let mut last_prune = Instant::now();
    loop {
        let ticket = status.poll_started();
        let mut more = false;
        match store
            .changes_since(cursor.high(), &cursor.gaps(), BATCH)
            .await
        {
            Ok(rows) => {
                if last_ok.elapsed() > config.lookback {
                    tracing::warn!(gap = ?last_ok.elapsed(), "change log unreadable for longer than the lookback window; clearing the Validate cache");
                    validator.cache().clear();
                }
                last_ok = Instant::now();
                more = rows.len() as u64 == BATCH;
                for row in rows {
                    if cursor.accept(row.seq, Instant::now())
                        && seen.first(row.seq)
                        && let Some(id) = row.token_id
                    {
                        validator.refresh(id).await;
                        metrics::change_applied(row.seq, Delivery::Poll);
                    }
                }
                if !more {
                    status.caught_up(ticket);
                    metrics::changelog_caught_up(cursor.high());
                }
                cursor.expire(config.lookback, Instant::now());
                seen.forget_older_than(config.lookback * 2);
            }
            Err(e) => tracing::warn!(error = %e, "change log poll failed"),
        }
        if last_prune.elapsed() > Duration::from_secs(60) {
            last_prune = Instant::now();
            match store.prune_changes(config.retention).await {
                Ok(n) if n > 0 => tracing::debug!(rows = n, "pruned change log"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "change log prune failed"),
            }
        }
        if more {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.poll_interval) => {}
            () = kick.notified() => {}
        }
    }
}
