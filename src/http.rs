//! The HTTP listeners beside the gRPC port, axum routers both:
//!
//! - `--http-listen`: forward-auth for gateways (`forward_auth`), over TLS
//!   when the gRPC port has it (same certificate, reloads and client-CA rule);
//! - `--metrics-listen`, plaintext, for the scraper and the kubelet:
//!
//! Two listeners rather than one: the metrics port is an operator's port
//! (network policies open it to Prometheus only, probes and scrapes expect
//! plaintext), while forward-auth carries every client's token and must be
//! reachable by the gateways, over TLS when the gRPC port has TLS.
//!
//! The metrics listener serves
//!
//! - `GET /metrics`: the Prometheus text format;
//! - `GET /readyz`: 200 while health is SERVING, else 503. The kubelet's
//!   native gRPC probes speak plaintext only, so with TLS on the gRPC port a
//!   Kubernetes readiness probe uses this instead (`httpGet`);
//! - `GET /livez`: 200 while the process answers.

pub mod forward_auth;
pub mod test_proxies;

use std::{io, net::SocketAddr, sync::Arc};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;

use crate::{
    error::{Error, Result},
    health::Health,
    telemetry::metrics::Scrape,
    tls::Tls,
};

/// The Prometheus text exposition format, version 0.0.4.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn router(scrape: Arc<Scrape>, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(scrape)
        .route(
            "/readyz",
            get(move || {
                let serving = health.is_serving();
                async move {
                    if serving {
                        (StatusCode::OK, "SERVING\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n")
                    }
                }
            }),
        )
        .route("/livez", get(|| async { "ok\n" }))
}

async fn metrics(State(scrape): State<Arc<Scrape>>) -> impl IntoResponse {
    // Rendering reads /proc and walks every series: off the async workers.
    match tokio::task::spawn_blocking(move || scrape.render()).await {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The TCP peer of a request (axum `ConnectInfo`), over TLS or not.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, PlainListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// Plain TCP connections with Nagle off: small responses must not wait for
/// delayed ACKs (~40 ms).
struct PlainListener(TcpListener);

impl Listener for PlainListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, addr) = Listener::accept(&mut self.0).await;
        let _ = tcp.set_nodelay(true);
        (tcp, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Listener::local_addr(&self.0)
    }
}

/// Serves `router` on `listener` (over TLS with `tls`) until `stop`, then
/// finishes the requests in flight; `what` names the listener in errors.
pub async fn serve(
    listener: TcpListener,
    tls: Option<&Tls>,
    router: Router,
    stop: CancellationToken,
    what: &str,
) -> Result<()> {
    let served = match tls {
        Some(tls) => {
            let addr = listener
                .local_addr()
                .map_err(|e| Error::Internal(format!("{what} listener address: {e}")))?;
            let incoming = TlsListener {
                incoming: tls.http_incoming(listener),
                addr,
            };
            axum::serve(
                incoming,
                router.into_make_service_with_connect_info::<Peer>(),
            )
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        }
        None => {
            axum::serve(
                PlainListener(listener),
                router.into_make_service_with_connect_info::<Peer>(),
            )
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        }
    };
    served.map_err(|e| Error::Internal(format!("{what} listener: {e}")))
}

/// TLS connections whose handshake is done (`Tls::http_incoming`), for axum.
struct TlsListener {
    incoming: ReceiverStream<io::Result<TlsStream<TcpStream>>>,
    addr: SocketAddr,
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(tls)) => {
                    let peer = tls.get_ref().0.peer_addr().unwrap_or(self.addr);
                    return (tls, peer);
                }
                Some(Err(_)) => {}
                // The accept loop ends only when this stream is dropped.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
