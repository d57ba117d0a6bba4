//! The HTTP listener beside the gRPC port (`--metrics-listen`): an axum
//! router, so further HTTP endpoints (a forward-auth endpoint for gateways)
//! can join it. It serves
//!
//! - `GET /metrics`: the Prometheus text format;
//! - `GET /readyz`: 200 while health is SERVING, else 503. The kubelet's
//!   native gRPC probes speak plaintext only, so with TLS on the gRPC port a
//!   Kubernetes readiness probe uses this instead (`httpGet`);
//! - `GET /livez`: 200 while the process answers.

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    error::{Error, Result},
    health::Health,
    telemetry::metrics::Scrape,
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

/// Serves `router` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) -> Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
        .map_err(|e| Error::Internal(format!("metrics listener: {e}")))
}
