//! Wiring and lifecycle. `Application::build` connects the store, runs
//! migrations, wires the services and binds the listener (so `port()` is known
//! before serving, which tests rely on with port 0); `run_until_stopped` serves
//! until the shutdown future resolves, then drains:
//! health NOT_SERVING -> wait `drain_delay` -> stop accepting -> finish in-flight
//! calls -> final last-used flush.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    api::{TokenApi, TokenServiceServer},
    config::Config,
    domain::token_value::valid_prefix,
    error::{Error, Result},
    manage::TokenManager,
    pb,
    store::Store,
    validation::{
        Validator,
        cache::VerifiedCache,
        coherence,
        hasher::Hasher,
        usage::{UsageRecorder, run_flusher},
    },
};

/// Name under which health reports the token service.
pub const SERVICE_NAME: &str = <TokenServiceServer<TokenApi> as tonic::server::NamedService>::NAME;

/// The service graph without a listener: shared by `serve` and `bootstrap`.
pub struct Services {
    pub store: Arc<Store>,
    pub usage: Arc<UsageRecorder>,
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
        store.migrate().await?;
        let hasher = Arc::new(Hasher::start(&config.hasher())?);
        let usage = Arc::new(UsageRecorder::default());
        let validator = Arc::new(Validator::new(
            Arc::clone(&store),
            hasher,
            VerifiedCache::new(config.cache()),
            Arc::clone(&usage),
        ));
        let manager = Arc::new(TokenManager::new(
            Arc::clone(&store),
            validator,
            config.policy(),
        ));
        Ok(Self {
            store,
            usage,
            manager,
        })
    }
}

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    services: Services,
    config: Config,
}

impl Application {
    pub async fn build(config: &Config) -> Result<Self> {
        let services = Services::build(config).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::Internal(format!("cannot listen on {}: {e}", config.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Internal(format!("listener address: {e}")))?;
        Ok(Self {
            listener,
            addr,
            services,
            config: config.clone(),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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
            services,
            config,
        } = self;
        let (health, health_service) = tonic_health::server::health_reporter();
        report(&health, ServingStatus::Serving).await;
        // Both reflection versions: older grpcurl and other tools only speak v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // google.rpc error details, so grpcurl can decode BadRequest violations.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| Error::Internal(format!("reflection service: {e}")))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| Error::Internal(format!("reflection service: {e}")))?;

        let stop_flusher = CancellationToken::new();
        let flusher = tokio::spawn(run_flusher(
            Arc::clone(&services.usage),
            Arc::clone(&services.store),
            config.last_used_flush_interval,
            stop_flusher.clone(),
        ));
        let stop_background = CancellationToken::new();
        let coherence = tokio::spawn(coherence::run(
            Arc::clone(&services.store),
            Arc::clone(services.manager.validator_arc()),
            config.coherence(),
            stop_background.clone(),
        ));
        let watcher = tokio::spawn(watch_store(
            Arc::clone(&services.store),
            health.clone(),
            config.store_unhealthy_after,
            stop_background.clone(),
        ));
        // Audit retention (ops::retention): only when a retention is set.
        let pruner = config.event_retention.map(|retention| {
            tokio::spawn(crate::ops::retention::run(
                Arc::clone(&services.store),
                retention,
                config.event_prune_interval,
                stop_background.clone(),
            ))
        });

        let drain = drain(
            shutdown,
            health,
            config.drain_delay,
            stop_background.clone(),
        );
        tracing::info!(%addr, "tokend serving");
        let served = Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(TokenServiceServer::new(TokenApi::new(Arc::clone(
                &services.manager,
            ))))
            // Our own listener (bound in `build`), so the socket options that
            // `Server::tcp_nodelay` would set must be set here: without
            // TCP_NODELAY, small responses wait on delayed ACKs (~40 ms).
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                drain,
            )
            .await;

        stop_background.cancel();
        let _ = tokio::join!(coherence, watcher);
        if let Some(pruner) = pruner {
            let _ = pruner.await;
        }
        stop_flusher.cancel();
        if let Err(e) = flusher.await {
            tracing::error!(error = %e, "last-used flusher failed");
        }
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

async fn drain(
    shutdown: impl Future<Output = ()>,
    health: HealthReporter,
    delay: Duration,
    background: CancellationToken,
) {
    shutdown.await;
    // Stop the store watcher first so it cannot flip health back to SERVING.
    background.cancel();
    tracing::info!(
        ?delay,
        "shutting down: reporting NOT_SERVING, then draining"
    );
    report(&health, ServingStatus::NotServing).await;
    tokio::time::sleep(delay).await;
}

/// Sets the health of both the token service and the server as a whole ("").
async fn report(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status(SERVICE_NAME, status).await;
    health.set_service_status("", status).await;
}

/// Reports NOT_SERVING while the store has been unreachable for longer than
/// `unhealthy_after`, and SERVING again once it answers.
async fn watch_store(
    store: Arc<Store>,
    health: HealthReporter,
    unhealthy_after: Duration,
    stop: CancellationToken,
) {
    let period = (unhealthy_after / 3).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut failing_since: Option<std::time::Instant> = None;
    let mut serving = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let ok = matches!(
            tokio::time::timeout(period.max(Duration::from_millis(500)), store.ping()).await,
            Ok(Ok(()))
        );
        if ok {
            failing_since = None;
            if !serving {
                tracing::info!("store reachable again: SERVING");
                report(&health, ServingStatus::Serving).await;
                serving = true;
            }
        } else {
            let since = *failing_since.get_or_insert_with(std::time::Instant::now);
            if serving && since.elapsed() >= unhealthy_after {
                tracing::warn!(unreachable_for = ?since.elapsed(), "store unreachable: NOT_SERVING");
                report(&health, ServingStatus::NotServing).await;
                serving = false;
            }
        }
        if stop.is_cancelled() {
            return;
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
