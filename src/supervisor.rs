//! Supervised background work. Each background task (change-log follower,
//! store watcher, last-used flusher, ...) runs under `Supervisor::spawn`:
//!
//! - a task that fails (returns `Err` or panics) is logged and started again
//!   after a backoff (100 ms, doubling up to 30 s, back to 100 ms once an
//!   attempt has run for a minute), and the restart is counted
//!   (`tokend_task_restarts_total{task}`);
//! - a task that returns `Ok(())` is done and is not restarted;
//! - `shutdown` cancels the shared stop token and waits for every task
//!   (tokio-util's `TaskTracker`), so a final flush completes before exit.
//!
//! Each attempt runs in its own tokio task, so a panic is caught at its
//! join handle instead of ending the supervising loop.

use std::{future::Future, time::Duration};

use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{error::Result, telemetry::metrics};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// An attempt that ran this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs and restarts background tasks until shutdown.
#[derive(Debug, Clone, Default)]
pub struct Supervisor {
    tracker: TaskTracker,
    stop: CancellationToken,
}

/// Which attempt of a supervised task this is: 0 for the first start.
pub type Attempt = u32;

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// The token every task is given; cancelled by `shutdown`.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Starts `task` under supervision. `make` builds one attempt from the
    /// attempt number and the stop token; the attempt should return when the
    /// token is cancelled.
    pub fn spawn<F, Fut>(&self, task: &'static str, mut make: F)
    where
        F: FnMut(Attempt, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            let mut attempt: Attempt = 0;
            loop {
                metrics::task(task, true, attempt > 0);
                let started = Instant::now();
                let outcome = tokio::spawn(make(attempt, stop.clone())).await;
                metrics::task(task, false, false);
                match outcome {
                    Ok(Ok(())) => {
                        tracing::debug!(task, "background task finished");
                        return;
                    }
                    _ if stop.is_cancelled() => return,
                    Ok(Err(e)) => {
                        tracing::error!(task, error = %e, ?backoff, "background task failed; restarting");
                    }
                    Err(e) => {
                        let what = if e.is_panic() { "panicked" } else { "was cancelled" };
                        tracing::error!(task, ?backoff, "background task {what}; restarting");
                    }
                }
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = FIRST_BACKOFF;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempt = attempt.saturating_add(1);
            }
        });
    }

    /// Cancels the stop token and waits until every task has returned.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;
    use crate::error::Error;

    #[tokio::test]
    async fn failures_and_panics_restart_until_shutdown() {
        let s = Supervisor::new();
        let runs = Arc::new(AtomicU32::new(0));
        let r = Arc::clone(&runs);
        s.spawn("flaky", move |attempt, stop| {
            r.fetch_add(1, Ordering::SeqCst);
            async move {
                match attempt {
                    0 => Err(Error::Internal("boom".into())),
                    1 => panic!("a bug"),
                    _ => {
                        stop.cancelled().await;
                        Ok(())
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        s.shutdown().await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_finished_task_is_not_restarted() {
        let s = Supervisor::new();
        let runs = Arc::new(AtomicU32::new(0));
        let r = Arc::clone(&runs);
        s.spawn("once", move |_, _| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        s.shutdown().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
