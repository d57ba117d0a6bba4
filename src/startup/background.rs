//! The supervised background work of a running server: the last-used
//! flusher, the warm start, the store watcher, the name index folder
//! (SQLite), audit retention, the hygiene sweeper, the change-log follower
//! (PostgreSQL), and the metrics and forward-auth listeners.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{MetricsListener, Services, bind};
use crate::{
    config::Config,
    error::Result,
    health::{Condition, FollowerStatus, Health},
    http,
    store::Store,
    supervisor::Supervisor,
    telemetry::metrics::{self, Scrape, Source},
    tls::Tls,
    validation::{Validator, coherence, usage::run_flusher, warm},
};

/// Starts the supervised background tasks of `services`.
pub(super) fn background(
    supervisor: &Supervisor,
    services: &Services,
    config: &Config,
    health: &Health,
    postgres: bool,
) {
    let (store, usage) = (&services.store, &services.usage);
    let interval = config.last_used_flush_interval;
    {
        let (usage, backfill, store) = (
            Arc::clone(usage),
            Arc::clone(&services.backfill),
            Arc::clone(store),
        );
        supervisor.spawn("last-used flusher", move |_, stop| {
            run_flusher(
                Arc::clone(&usage),
                Arc::clone(&backfill),
                Arc::clone(&store),
                interval,
                stop,
            )
        });
    }
    {
        let validator = Arc::clone(&services.validator);
        let (warm, health) = (config.warm(), health.clone());
        supervisor.spawn("warm start", move |_, stop| {
            warm_then_ready(Arc::clone(&validator), warm.clone(), health.clone(), stop)
        });
    }
    {
        let (store, health) = (Arc::clone(store), health.clone());
        let unhealthy_after = config.store_unhealthy_after;
        supervisor.spawn("store watcher", move |_, stop| {
            watch_store(Arc::clone(&store), health.clone(), unhealthy_after, stop)
        });
    }
    if !postgres {
        let store = Arc::clone(store);
        supervisor.spawn("name index folder", move |_, stop| {
            Arc::clone(&store).run_name_index_folder(stop)
        });
    }
    // Audit retention (ops::retention): only when a retention is set.
    if let Some(retention) = config.event_retention {
        let store = Arc::clone(store);
        let interval = config.event_prune_interval;
        supervisor.spawn("audit retention", move |_, stop| {
            crate::ops::retention::run(Arc::clone(&store), retention, interval, stop)
        });
    }
    // The hygiene sweeper (manage::sweeper), unless turned off here.
    if let Some(sweep) = config.sweeper() {
        match config.policy_defaults.account_policy() {
            Ok(defaults) => {
                let sweeper = Arc::new(crate::manage::sweeper::Sweeper::new(
                    Arc::clone(store),
                    Arc::clone(&services.validator),
                    Arc::clone(usage),
                    defaults,
                    services.clock.clone(),
                    sweep,
                ));
                supervisor.spawn("sweeper", move |_, stop| Arc::clone(&sweeper).run(stop));
            }
            // Refused at start-up already (`Config::policy`); never here.
            Err(e) => tracing::error!(error = %e, "sweeper not started"),
        }
    }
    if postgres {
        let status = FollowerStatus::new(health.clone());
        let store = Arc::clone(store);
        let validator = Arc::clone(&services.validator);
        let coherence = config.coherence();
        supervisor.spawn("change-log follower", move |attempt, stop| {
            let (store, validator) = (Arc::clone(&store), Arc::clone(&validator));
            let (coherence, status) = (coherence.clone(), Arc::clone(&status));
            async move {
                let _session = status.session();
                if attempt > 0 {
                    // What changed while no follower ran is unknown: the
                    // cache starts again from the store.
                    tracing::warn!("change-log follower restarted; clearing the Validate cache");
                    validator.cache().clear();
                }
                coherence::run(store, validator, coherence, stop, Arc::clone(&status)).await
            }
        });
    }
}

/// Serves `/metrics` (and upkeeps the histograms) under the supervisor.
pub(super) fn serve_metrics(
    supervisor: &Supervisor,
    m: MetricsListener,
    services: &Services,
    health: &Health,
) {
    let validator = Arc::clone(&services.validator);
    let store = Arc::clone(&services.store);
    let usage = Arc::clone(&services.usage);
    let sources: Vec<Source> = vec![
        Box::new(move || {
            let cache = validator.cache();
            let (failed, unknown, failures) = cache.negative_len();
            metrics::cache_entries(cache.len(), failed, unknown, failures);
            metrics::argon2_verifications(validator.hasher().verifications());
        }),
        Box::new(move || metrics::store_statements(store.statements_executed())),
        Box::new(move || metrics::last_used_pending(usage.pending())),
    ];
    let scrape = Scrape::new(m.handle, sources);
    let router = http::router(Arc::clone(&scrape), health.clone());
    let (addr, mut first) = (m.addr, Some(m.listener));
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    supervisor.spawn("metrics listener", move |_, stop| {
        let (listener, router) = (first.take(), router.clone());
        async move {
            let listener = match listener {
                Some(l) => l,
                None => bind(addr, "metrics").await?.0,
            };
            http::serve(listener, None, router, stop, "metrics").await
        }
    });
    supervisor.spawn("metrics upkeep", move |_, stop| {
        let scrape = Arc::clone(&scrape);
        async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(5)) => scrape.upkeep(),
                }
            }
        }
    });
}

/// Serves forward-auth for gateways on `--http-listen` under the supervisor.
pub(super) fn serve_forward_auth(
    supervisor: &Supervisor,
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<Arc<Tls>>,
    services: &Services,
    trusted_proxies: Vec<crate::domain::policy::Cidr>,
) {
    let router = http::forward_auth::router(Arc::clone(&services.manager), trusted_proxies);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, "forward-auth on {scheme}://{addr}{}", http::forward_auth::PATH);
    let mut first = Some(listener);
    supervisor.spawn("forward-auth listener", move |_, stop| {
        let (listener, router, tls) = (first.take(), router.clone(), tls.clone());
        async move {
            let listener = match listener {
                Some(l) => l,
                None => bind(addr, "HTTP").await?.0,
            };
            http::serve(listener, tls.as_deref(), router, stop, "HTTP").await
        }
    });
}

/// Waits until changes are followed (on PostgreSQL: so none committed during
/// the load is lost), loads the Validate cache, logs how many live tokens
/// still need a verifier under the current key, then lets health report
/// SERVING.
async fn warm_then_ready(
    validator: Arc<Validator>,
    config: warm::WarmConfig,
    health: Health,
    stop: CancellationToken,
) -> Result<()> {
    tokio::select! {
        () = stop.cancelled() => return Ok(()),
        followed = tokio::time::timeout(config.timeout, health.until_met(Condition::Follower)) => {
            if followed.is_err() {
                tracing::warn!("the change log is not followed yet; warm start skipped");
                health.set(Condition::Warming, true);
                return Ok(());
            }
        }
    }
    tokio::select! {
        () = stop.cancelled() => return Ok(()),
        _ = warm::run(&validator, &config) => {}
    }
    report_key_usage(&validator).await;
    health.set(Condition::Warming, true);
    Ok(())
}

/// Logs how many live tokens are not yet under the current verifier key (so
/// an operator knows when an older key can be dropped). Before SERVING, so
/// that it is start-up work, not traffic.
async fn report_key_usage(validator: &Validator) {
    match validator.store().verifier_key_usage().await {
        Ok(usage) => {
            let keyring = validator.cache().keyring();
            let current: i64 = usage
                .iter()
                .filter(|u| u.key_id.as_deref() == Some(keyring.current_id()))
                .map(|u| u.tokens)
                .sum();
            let others: i64 = usage.iter().map(|u| u.tokens).sum::<i64>() - current;
            if others > 0 {
                tracing::info!(
                    live_tokens_not_under_current_key = others,
                    live_tokens_under_current_key = current,
                    "verifiers: tokens not yet under the current key are rewritten on their next use; `tokend key-status` shows them per key"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot count verifiers per key"),
    }
}

/// Marks the store condition failing while the store has been unreachable
/// for longer than `unhealthy_after`, and met again once it answers.
async fn watch_store(
    store: Arc<Store>,
    health: Health,
    unhealthy_after: Duration,
    stop: CancellationToken,
) -> Result<()> {
    let period = (unhealthy_after / 3).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(period) => {}
        }
        let ok = matches!(
            tokio::time::timeout(period.max(Duration::from_millis(500)), store.ping()).await,
            Ok(Ok(()))
        );
        if ok {
            if failing_since.take().is_some() {
                tracing::info!("store reachable again");
            }
            health.set(Condition::Store, true);
        } else {
            let since = *failing_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= unhealthy_after {
                if health.is_serving() {
                    tracing::warn!(unreachable_for = ?since.elapsed(), "store unreachable: NOT_SERVING");
                }
                health.set(Condition::Store, false);
            }
        }
    }
}
