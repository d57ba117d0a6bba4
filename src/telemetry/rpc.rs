//! A tower layer around all the gRPC services that counts every RPC by
//! method and gRPC status code (`tokend_grpc_requests_total`).
//!
//! The method is found by comparing the request path with the known ones
//! (`metrics::method_index`), and the code is read from the response headers:
//! tonic sends a failed unary call as a trailers-only response, whose headers
//! carry `grpc-status`; a response without it is a call whose handler
//! succeeded (its `grpc-status: 0` follows in the trailers). Wrapping the body
//! to read the trailers would cost every response a poll through one more
//! layer, for the rare error that happens while a streaming response is
//! already being sent.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderName, Request, Response};
use tower::{Layer, Service};

use super::metrics;

/// Counts RPCs by method and gRPC code.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for RpcMetrics<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = metrics::method_index(req.uri().path());
        Counted {
            inner: self.inner.call(req),
            method,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner call's future; counts its outcome when it completes.
    pub struct Counted<F> {
        #[pin]
        inner: F,
        method: usize,
    }
}

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

impl<F, R, E> Future for Counted<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        let code = match &out {
            Ok(response) => response
                .headers()
                .get(&GRPC_STATUS)
                .map_or(0, |v| tonic::Code::from_bytes(v.as_bytes()) as i32),
            // The service itself failed: the connection answers an error.
            Err(_) => tonic::Code::Internal as i32,
        };
        metrics::rpc_finished(*this.method, code);
        Poll::Ready(out)
    }
}
