//! The audit retention pruner (`--event-retention`): a background task of the
//! server that deletes events older than the retention period. It works in
//! batches of `BATCH` events, each its own short transaction with a pause
//! after it, so a write never waits for more than one batch. On PostgreSQL a
//! batch runs only on the replica that wins a try-lock (`Store::prune_events`);
//! the others skip until their next pass.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{error::Result, store::Store};

/// Events deleted per transaction.
pub const BATCH: u64 = 500;
/// Pause between batches, so writers queue behind at most one batch.
const PAUSE: Duration = Duration::from_millis(20);

/// Prunes now and then every `interval`, until `stop`.
pub async fn run(
    store: Arc<Store>,
    retention: Duration,
    interval: Duration,
    stop: CancellationToken,
) -> Result<()> {
    tracing::info!(
        ?retention,
        ?interval,
        "audit retention: pruning older events in the background"
    );
    loop {
        prune_once(&store, retention, &stop).await;
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// One pass: deletes every event older than `retention`, batch by batch.
/// Returns how many were deleted.
pub async fn prune_once(store: &Store, retention: Duration, stop: &CancellationToken) -> u64 {
    let Ok(retention) = chrono::Duration::from_std(retention) else {
        return 0; // longer than any clock can express: nothing is that old
    };
    let Some(cutoff) = chrono::Utc::now().checked_sub_signed(retention) else {
        return 0;
    };
    let mut total = 0;
    while !stop.is_cancelled() {
        match store.prune_events(cutoff, BATCH).await {
            Ok(Some(n)) => {
                total += n;
                if n < BATCH {
                    break;
                }
                tokio::time::sleep(PAUSE).await;
            }
            Ok(None) => {
                tracing::debug!("audit retention: another replica is pruning; skipping this pass");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit retention: pruning failed; retrying next pass");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(pruned = total, %cutoff, "audit retention: pruned events recorded before the cutoff");
    }
    total
}
