//! Wiring and lifecycle. `Application::build` connects the store, runs
//! migrations, loads the verifier keys, wires the services and binds the
//! listener (so `port()` is known before serving, which tests rely on with
//! port 0); `run_until_stopped` serves until the shutdown future resolves:
//! health NOT_SERVING -> follow changes -> warm start -> SERVING (while the
//! store answers) ... shutdown -> NOT_SERVING -> wait `drain_delay` -> stop
//! accepting -> finish in-flight calls -> final last-used and verifier flush.

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
            Store::sqlite_file(&config.database_url).as_deref(),
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
            VerifiedCache::new(config.cache(), Arc::new(keyring)),
            Arc::clone(&usage),
            Arc::clone(&backfill),
        ));
        let manager = Arc::new(TokenManager::new(
            Arc::clone(&store),
            validator,
            config.policy(),
        ));
        Ok(Self {
            store,
            usage,
            backfill,
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
        // NOT_SERVING until the warm start is done: a load balancer must not
        // send traffic to a process whose cache is still cold.
        let readiness = Arc::new(Readiness::new(health));
        readiness.publish().await;
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
            Arc::clone(&services.backfill),
            Arc::clone(&services.store),
            config.last_used_flush_interval,
            stop_flusher.clone(),
        ));
        let stop_background = CancellationToken::new();
        let (following, followed) = tokio::sync::oneshot::channel();
        let coherence = tokio::spawn(coherence::run(
            Arc::clone(&services.store),
            Arc::clone(services.manager.validator_arc()),
            config.coherence(),
            following,
            stop_background.clone(),
        ));
        let warm = tokio::spawn(warm_then_ready(
            Arc::clone(services.manager.validator_arc()),
            config.warm(),
            followed,
            Arc::clone(&readiness),
            stop_background.clone(),
        ));
        let watcher = tokio::spawn(watch_store(
            Arc::clone(&services.store),
            Arc::clone(&readiness),
            config.store_unhealthy_after,
            stop_background.clone(),
        ));

        let drain = drain(
            shutdown,
            Arc::clone(&readiness),
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
        let _ = tokio::join!(coherence, watcher, warm);
        stop_flusher.cancel();
        if let Err(e) = flusher.await {
            tracing::error!(error = %e, "last-used flusher failed");
        }
        let validator = services.manager.validator();
        if services.backfill.pending() > 0 {
            services.backfill.flush(&services.store).await;
        }
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
    readiness: Arc<Readiness>,
    delay: Duration,
    background: CancellationToken,
) {
    shutdown.await;
    background.cancel();
    tracing::info!(
        ?delay,
        "shutting down: reporting NOT_SERVING, then draining"
    );
    readiness.set(|r| r.stopping = true).await;
    tokio::time::sleep(delay).await;
}

/// What health reports: SERVING once the warm start is done, while the store
/// answers, until shutdown begins.
struct Readiness {
    health: HealthReporter,
    state: tokio::sync::Mutex<ReadyState>,
}

#[derive(Debug, Clone, Copy)]
struct ReadyState {
    warm: bool,
    store_reachable: bool,
    stopping: bool,
    /// What was last reported.
    reported: Option<ServingStatus>,
}

impl Readiness {
    fn new(health: HealthReporter) -> Self {
        Self {
            health,
            state: tokio::sync::Mutex::new(ReadyState {
                warm: false,
                store_reachable: true,
                stopping: false,
                reported: None,
            }),
        }
    }

    /// Changes the state and reports the resulting status if it changed.
    async fn set(&self, change: impl FnOnce(&mut ReadyState)) {
        let mut state = self.state.lock().await;
        change(&mut state);
        let status = if state.warm && state.store_reachable && !state.stopping {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if state.reported != Some(status) {
            state.reported = Some(status);
            report(&self.health, status).await;
        }
    }

    async fn publish(&self) {
        self.set(|_| {}).await;
    }
}

/// Sets the health of both the token service and the server as a whole ("").
async fn report(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status(SERVICE_NAME, status).await;
    health.set_service_status("", status).await;
}

/// Waits until changes are followed (so none committed during the load is
/// lost), loads the Validate cache, then lets health report SERVING. Also
/// logs how many live tokens still need a verifier under the current key.
async fn warm_then_ready(
    validator: Arc<Validator>,
    config: warm::WarmConfig,
    followed: tokio::sync::oneshot::Receiver<()>,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) {
    tokio::select! {
        () = stop.cancelled() => return,
        r = tokio::time::timeout(config.timeout, followed) => {
            if !matches!(r, Ok(Ok(()))) {
                tracing::warn!("the change log is not followed yet; warm start skipped");
                readiness.set(|r| r.warm = true).await;
                return;
            }
        }
    }
    tokio::select! {
        () = stop.cancelled() => return,
        _ = warm::run(&validator, &config) => {}
    }
    report_key_usage(&validator).await;
    readiness.set(|r| r.warm = true).await;
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

/// Reports NOT_SERVING while the store has been unreachable for longer than
/// `unhealthy_after`, and SERVING again once it answers.
async fn watch_store(
    store: Arc<Store>,
    readiness: Arc<Readiness>,
    unhealthy_after: Duration,
    stop: CancellationToken,
) {
    let period = (unhealthy_after / 3).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut failing_since: Option<std::time::Instant> = None;
    let mut reachable = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let ok = matches!(
            tokio::time::timeout(period.max(Duration::from_millis(500)), store.ping()).await,
            Ok(Ok(()))
        );
        if stop.is_cancelled() {
            return;
        }
        if ok {
            failing_since = None;
            if !reachable {
                tracing::info!("store reachable again");
                readiness.set(|r| r.store_reachable = true).await;
                reachable = true;
            }
        } else {
            let since = *failing_since.get_or_insert_with(std::time::Instant::now);
            if reachable && since.elapsed() >= unhealthy_after {
                tracing::warn!(unreachable_for = ?since.elapsed(), "store unreachable: NOT_SERVING");
                readiness.set(|r| r.store_reachable = false).await;
                reachable = false;
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
