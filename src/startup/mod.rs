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
//!
//! The background tasks are in `background`; what can stop start-up is
//! `StartupError` (`error`).

mod background;
mod error;

use self::background::{background, serve_forward_auth, serve_metrics};
pub use self::error::StartupError;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tonic::transport::{Server, server::TcpIncoming};

use crate::{
    api::{
        TokenApi, TokenServiceServer,
        connection::Connection,
        ext_authz::{self, AuthorizationServer, ExtAuthzApi},
    },
    config::Config,
    domain::token_value::valid_prefix,
    error::{Error, Result},
    health::{Condition, Health},
    manage::{Secrets, TokenManager},
    pb,
    store::Store,
    supervisor::Supervisor,
    telemetry::{metrics, rpc::RpcMetricsLayer},
    tls::Tls,
    validation::{
        Validator,
        backfill::VerifierBackfill,
        cache::VerifiedCache,
        clock::Clock,
        hasher::Hasher,
        key_file::{self, KeySource},
        usage::UsageRecorder,
    },
};

/// Name under which health reports the token service.
pub const SERVICE_NAME: &str = <TokenServiceServer<TokenApi> as tonic::server::NamedService>::NAME;

/// The service graph without a listener: shared by `serve` and `bootstrap`.
pub struct Services {
    pub store: Arc<Store>,
    pub usage: Arc<UsageRecorder>,
    pub backfill: Arc<VerifierBackfill>,
    pub validator: Arc<Validator>,
    pub manager: Arc<TokenManager>,
    /// The one clock of this process (the system clock).
    pub clock: Clock,
}

impl Services {
    /// Connects, migrates and wires everything.
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
        if !valid_prefix(&config.token_prefix) {
            return Err(StartupError::Setting {
                setting: "token_prefix",
                problem: "must be 1..=16 lowercase letters or digits",
            });
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
        // Renames an earlier process (or another writer) left for the name
        // index to fold; before serving, so the folder starts from nothing.
        let folded = store.fold_all_of_name_index().await?;
        if folded > 0 {
            tracing::info!(folded, "name index: folded the renames left pending");
        }
        let hasher = Arc::new(Hasher::start(&config.hasher())?);
        let keyring = Arc::new(keyring);
        let usage = Arc::new(UsageRecorder::default());
        let backfill = Arc::new(VerifierBackfill::default());
        let clock = Clock::system();
        let validator = Arc::new(Validator::new(
            Arc::clone(&store),
            Arc::clone(&hasher),
            VerifiedCache::new(
                config.cache(),
                Arc::clone(&keyring),
                crate::api::wire::encode_verified,
            ),
            Arc::clone(&usage),
            Arc::clone(&backfill),
        ));
        let manager = Arc::new(TokenManager::new(
            Arc::clone(&store),
            Arc::clone(&validator),
            Secrets { hasher, keyring },
            clock.clone(),
            config.policy()?,
        ));
        Ok(Self {
            store,
            usage,
            backfill,
            validator,
            manager,
            clock,
        })
    }
}

/// The metrics listener, bound in `build`.
pub(crate) struct MetricsListener {
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

async fn bind(
    addr: SocketAddr,
    what: &'static str,
) -> Result<(TcpListener, SocketAddr), StartupError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Listen { addr, what, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartupError::ListenerAddress { what, source })?;
    Ok((listener, bound))
}

impl Application {
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
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
            .map_err(|e| StartupError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| StartupError::Reflection(e.to_string()))?;

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
            let trusted = config.trusted_proxies()?;
            serve_forward_auth(&supervisor, listener, addr, tls.clone(), &services, trusted);
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
            .add_service(TokenServiceServer::new(TokenApi::new(
                Arc::clone(&services.manager),
                services.clock.clone(),
            )))
            .add_service(AuthorizationServer::new(ExtAuthzApi::new(Arc::clone(
                &services.manager,
            ))));
        let served = match &tls {
            Some(tls) => {
                let incoming = tls.incoming(listener).map(|accepted| {
                    accepted.map(|stream| {
                        let peer = stream.get_ref().0.peer_addr().ok();
                        Connection::new(stream, peer)
                    })
                });
                router.serve_with_incoming_shutdown(incoming, drain).await
            }
            // Our own listener (bound in `build`), so the socket options that
            // `Server::tcp_nodelay` would set must be set here: without
            // TCP_NODELAY, small responses wait on delayed ACKs (~40 ms).
            None => {
                let incoming =
                    TcpIncoming::from(listener)
                        .with_nodelay(Some(true))
                        .map(|accepted| {
                            accepted.map(|stream| {
                                let peer = stream.peer_addr().ok();
                                Connection::new(stream, peer)
                            })
                        });
                router.serve_with_incoming_shutdown(incoming, drain).await
            }
        };

        // In-flight calls are done: stop the background work, which ends
        // with a final last-used flush.
        supervisor.shutdown().await;
        let validator = &services.validator;
        tracing::info!(
            argon2_verifications = validator.hasher().verifications(),
            cache_entries = validator.cache().len(),
            sql_statements = services.store.statements_executed(),
            "tokend stopped"
        );
        served.map_err(|e| Error::Internal(format!("gRPC server: {e}")))
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
