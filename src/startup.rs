//! Wiring and lifecycle. `Application::build` installs the metrics recorder
//! (when `--metrics-listen` is set), connects the store, loads the verifier
//! keys, runs migrations, wires the services, loads the TLS certificate and
//! binds the listeners (so `port()` is known before serving, which tests rely
//! on with port 0); `run_until_stopped` starts the supervised background
//! tasks and serves: NOT_SERVING until the warm start has loaded the Validate
//! cache (after the change-log follower caught up, on PostgreSQL), then
//! SERVING while the store answers, until the shutdown future resolves:
//! health NOT_SERVING -> wait `drain_delay` -> stop accepting -> finish in-flight
//! calls -> stop the background tasks and wait for them (final last-used and
//! verifier flush).

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, server::TcpIncoming};

use crate::{
    api::{
        TokenApi, TokenServiceServer,
        ext_authz::{self, AuthorizationServer, ExtAuthzApi},
    },
    config::Config,
    domain::token_value::valid_prefix,
    error::{Error, Result},
    health::{Condition, FollowerStatus, Health},
    http,
    manage::TokenManager,
    pb,
    store::Store,
    supervisor::Supervisor,
    telemetry::{
        metrics::{self, Scrape, Source},
        rpc::RpcMetricsLayer,
    },
    tls::Tls,
    validation::{
        Validator,
        backfill::VerifierBackfill,
        cache::VerifiedCache,
        coherence,
        hasher::Hasher,
        key_file::{self, KeySource},
        usage::{UsageRecorder, run_flusher},
        warm,
    },
};

/// Name under which health reports the token service.
pub const SERVICE_NAME: &str = <TokenServiceServer<TokenApi> as tonic::server::NamedService>::NAME;

/// The service graph without a listener: shared by `serve` and `bootstrap`.
pub struct Services {
    pub store: Arc<Store>,
    pub usage: Arc<UsageRecorder>,
    pub backfill: Arc<VerifierBackfill>,
    pub manager: Arc<TokenManager>,
}

impl Services {
    /// Connects, migrates and wires everything.
    pub async fn build(config: &Config) -> Result<Self> {
        if !valid_prefix(&config.token_prefix) {
            return Err(Error::invalid(
                "token_prefix",
                "must be 1..=16 lowercase letters or digits",
            ));
        }
        let store = Arc::new(Store::connect(&config.store()).await?);
        let (keyring, source) = key_file::load(
            config.verifier_key_file.as_deref(),
            Store::sqlite_file(config.database_url.expose_secret()).as_deref(),
            store.is_shared(),
        )?;
        match &source {
            KeySource::Created(path) => tracing::info!(
                path = %path.display(),
                key_id = keyring.current_id(),
                "created a verifier key file beside the database: back it up with the database, it is not in it"
            ),
            KeySource::Configured(path) | KeySource::Beside(path) => {
                tracing::info!(path = %path.display(), current_key_id = keyring.current_id(), keys = keyring.ids().count(), "verifier keys loaded")
            }
            KeySource::Ephemeral => {
                tracing::warn!(
                    "in-memory database: using a verifier key that dies with the process"
                )
            }
        }
        store.migrate().await?;
        let hasher = Arc::new(Hasher::start(&config.hasher())?);
        let usage = Arc::new(UsageRecorder::default());
        let backfill = Arc::new(VerifierBackfill::default());
        let validator = Arc::new(Validator::new(
            Arc::clone(&store),
            hasher,
            VerifiedCache::new(
                config.cache(),
                Arc::new(keyring),
                crate::api::wire::encode_verified,
            ),
            Arc::clone(&usage),
            Arc::clone(&backfill),
        ));
        let manager = Arc::new(TokenManager::new(
            Arc::clone(&store),
            validator,
            config.policy()?,
        ));
        Ok(Self {
            store,
            usage,
            backfill,
            manager,
        })
    }
}

/// The metrics listener, bound in `build`.
struct MetricsListener {
    listener: TcpListener,
    addr: SocketAddr,
    handle: PrometheusHandle,
}

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<Arc<Tls>>,
    metrics: Option<MetricsListener>,
    /// The forward-auth listener (`--http-listen`), bound in `build`.
    http: Option<(TcpListener, SocketAddr)>,
    services: Services,
    health: Health,
    config: Config,
}

async fn bind(addr: SocketAddr, what: &str) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Internal(format!("cannot listen on {addr} ({what}): {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("{what} listener address: {e}")))?;
    Ok((listener, bound))
}

impl Application {
    pub async fn build(config: &Config) -> Result<Self> {
        // First, so every part records from its first call on.
        let handle = config
            .metrics_listen
            .map(|_| metrics::install())
            .transpose()?;
        let services = Services::build(config).await?;
        let tls = config
            .tls()
            .map(|files| Tls::load(&files))
            .transpose()?
            .map(Arc::new);
        let (listener, addr) = bind(config.listen, "gRPC").await?;
        let metrics = match (config.metrics_listen, handle) {
            (Some(at), Some(handle)) => {
                let (listener, addr) = bind(at, "metrics").await?;
                Some(MetricsListener {
                    listener,
                    addr,
                    handle,
                })
            }
            _ => None,
        };
        let http = match config.http_listen {
            Some(at) => Some(bind(at, "HTTP").await?),
            None => None,
        };
        // Not ready until the warm start has loaded the Validate cache, and
        // on PostgreSQL until the change-log follower has connected and
        // caught up.
        let health = Health::new(if services.store.is_shared() {
            &[Condition::Warming, Condition::Follower]
        } else {
            &[Condition::Warming]
        });
        Ok(Self {
            listener,
            addr,
            tls,
            metrics,
            http,
            services,
            health,
            config: config.clone(),
        })
    }

    /// What health reports, shared with the running server: e.g. to wait
    /// until it is ready (`Health::until_serving`).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served, when `--metrics-listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.addr)
    }

    /// Where forward-auth is served, when `--http-listen` is set.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|h| h.1)
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Serves until `shutdown` resolves, then drains and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let Self {
            listener,
            addr,
            tls,
            metrics,
            http,
            services,
            health,
            config,
        } = self;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        // Both reflection versions: older grpcurl and other tools only speak v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // google.rpc error details, so grpcurl can decode BadRequest violations.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(ext_authz::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| Error::Internal(format!("reflection service: {e}")))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| Error::Internal(format!("reflection service: {e}")))?;

        let postgres = services.store.is_shared();
        let supervisor = Supervisor::new();
        {
            let health = health.clone();
            supervisor.spawn("health reporter", move |_, stop| {
                health
                    .clone()
                    .report(reporter.clone(), &[SERVICE_NAME], stop)
            });
        }
        background(&supervisor, &services, &config, &health, postgres);
        if let Some(tls) = &tls {
            let tls = Arc::clone(tls);
            supervisor.spawn("tls reloader", move |_, stop| Arc::clone(&tls).watch(stop));
        }
        if let Some(m) = metrics {
            serve_metrics(&supervisor, m, &services, &health);
        }
        if let Some((listener, addr)) = http {
            serve_forward_auth(&supervisor, listener, addr, tls.clone(), &services);
        }

        let drain = {
            let manager = Arc::clone(&services.manager);
            async move {
                drain(shutdown, health, config.drain_delay).await;
                // Open streams would hold the graceful shutdown forever.
                manager.stop_watches();
            }
        };
        tracing::info!(%addr, tls = tls.is_some(), "tokend serving");
        let router = Server::builder()
            .layer(RpcMetricsLayer)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(TokenServiceServer::new(TokenApi::new(Arc::clone(
                &services.manager,
            ))))
            .add_service(AuthorizationServer::new(ExtAuthzApi::new(Arc::clone(
                &services.manager,
            ))));
        let served = match &tls {
            Some(tls) => {
                router
                    .serve_with_incoming_shutdown(tls.incoming(listener), drain)
                    .await
            }
            // Our own listener (bound in `build`), so the socket options that
            // `Server::tcp_nodelay` would set must be set here: without
            // TCP_NODELAY, small responses wait on delayed ACKs (~40 ms).
            None => {
                router
                    .serve_with_incoming_shutdown(
                        TcpIncoming::from(listener).with_nodelay(Some(true)),
                        drain,
                    )
                    .await
            }
        };

        // In-flight calls are done: stop the background work, which ends
        // with a final last-used flush.
        supervisor.shutdown().await;
        let validator = services.manager.validator();
        tracing::info!(
            argon2_verifications = validator.hasher().verifications(),
            cache_entries = validator.cache().len(),
            sql_statements = services.store.statements_executed(),
            "tokend stopped"
        );
        served.map_err(|e| Error::Internal(format!("gRPC server: {e}")))
    }
}

/// Starts the supervised background tasks of `services`.
fn background(
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
        let validator = Arc::clone(services.manager.validator_arc());
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
    // Audit retention (ops::retention): only when a retention is set.
    if let Some(retention) = config.event_retention {
        let store = Arc::clone(store);
        let interval = config.event_prune_interval;
        supervisor.spawn("audit retention", move |_, stop| {
            crate::ops::retention::run(Arc::clone(&store), retention, interval, stop)
        });
    }
    if postgres {
        let status = FollowerStatus::new(health.clone());
        let store = Arc::clone(store);
        let validator = Arc::clone(services.manager.validator_arc());
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
fn serve_metrics(
    supervisor: &Supervisor,
    m: MetricsListener,
    services: &Services,
    health: &Health,
) {
    let validator = Arc::clone(services.manager.validator_arc());
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
fn serve_forward_auth(
    supervisor: &Supervisor,
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<Arc<Tls>>,
    services: &Services,
) {
    let router = http::forward_auth::router(Arc::clone(&services.manager));
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

async fn drain(shutdown: impl Future<Output = ()>, health: Health, delay: Duration) {
    shutdown.await;
    tracing::info!(
        ?delay,
        "shutting down: reporting NOT_SERVING, then draining"
    );
    health.set(Condition::Draining, false);
    // Let the reporter publish NOT_SERVING before the delay starts.
    tokio::task::yield_now().await;
    tokio::time::sleep(delay).await;
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

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
