//! Warm start: before a process reports SERVING, it loads live tokens into
//! its Validate cache straight from the store, most recently used first.
//! Each entry's digest is the stored verifier, so no secret and no argon2 is
//! needed, and the first Validate of every loaded token is already a hit: a
//! restart, a deploy or a new replica is warm before it takes traffic.
//!
//! Changes that commit while the load runs must not be lost: the caller starts
//! following changes (the change log on PostgreSQL; on SQLite every change
//! goes through this process) before the load begins, and the cache remembers
//! which ids changed since then; a loaded row of such an id is not cached (the
//! first Validate reads it afresh).

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use futures_util::StreamExt;

use super::Validator;
use crate::{error::Result, store::WarmQuery};

/// What to load and for how long.
#[derive(Debug, Clone)]
pub struct WarmConfig {
    pub enabled: bool,
    /// Most tokens loaded (default: the cache capacity).
    pub max_tokens: usize,
    /// Only tokens used (or, never used, created) within this look-back.
    pub lookback: Duration,
    /// Past this the process serves anyway, with what it has loaded.
    pub timeout: Duration,
}

/// What a warm start did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WarmReport {
    /// Rows read from the store.
    pub read: usize,
    /// Entries cached.
    pub loaded: usize,
    pub elapsed: Duration,
    pub timed_out: bool,
}

/// Loads the cache; never fails start-up: an error is logged and the process
/// serves with what it has (misses still read the store).
pub async fn run(validator: &Validator, config: &WarmConfig) -> WarmReport {
    let started = Instant::now();
    if !config.enabled || config.max_tokens == 0 {
        return WarmReport::default();
    }
    let cache = validator.cache();
    let read = AtomicUsize::new(0);
    let loaded = AtomicUsize::new(0);
    cache.begin_load();
    let load = async {
        let now = chrono::Utc::now();
        let lookback = chrono::Duration::from_std(config.lookback).unwrap_or(chrono::Duration::MAX);
        let query = WarmQuery {
            key_ids: cache.keyring().ids().map(str::to_owned).collect(),
            since: now
                .checked_sub_signed(lookback)
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC),
            now,
            limit: u64::try_from(config.max_tokens.min(cache.capacity())).unwrap_or(u64::MAX),
        };
        let mut rows = validator.store().warm_tokens(&query).await?;
        while let Some(token) = rows.next().await {
            let n = read.fetch_add(1, Ordering::Relaxed) + 1;
            if cache.load(&token?) {
                loaded.fetch_add(1, Ordering::Relaxed);
            }
            // Let Validates that arrive meanwhile (health says NOT_SERVING,
            // but clients may come anyway) be served on this worker too.
            if n.is_multiple_of(4096) {
                tokio::task::yield_now().await;
            }
        }
        Result::<()>::Ok(())
    };
    let outcome = tokio::time::timeout(config.timeout, load).await;
    cache.end_load();
    let report = WarmReport {
        read: read.into_inner(),
        loaded: loaded.into_inner(),
        elapsed: started.elapsed(),
        timed_out: outcome.is_err(),
    };
    match outcome {
        Ok(Ok(())) => {
            tracing::info!(loaded = report.loaded, read = report.read, elapsed = ?report.elapsed, "warm start: Validate cache loaded")
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, loaded = report.loaded, "warm start failed; serving with what was loaded")
        }
        Err(_) => {
            tracing::warn!(loaded = report.loaded, timeout = ?config.timeout, "warm start timed out; serving with what was loaded")
        }
    }
    report
}
