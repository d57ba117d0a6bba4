//! An accepted gRPC connection and what the server keeps per connection.
//!
//! The listeners (plaintext and TLS, `startup`) wrap each accepted stream in
//! a `Connection`; tonic hands its `ConnectionInfo` to every request of that
//! connection as a request extension. It holds the peer's address and the
//! connection's remembered caller (`validation::callers`), which lets the
//! RPCs of one long-lived client connection skip re-checking the same caller
//! credential on every call.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use crate::validation::callers::CallerMemo;

/// Per-connection state, cloned into every request's extensions.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The TCP peer (the client, or the proxy in front of it).
    pub peer: Option<SocketAddr>,
    pub callers: Arc<CallerMemo>,
}

pin_project_lite::pin_project! {
    /// An accepted stream (`TcpStream`, or TLS over it) with its `ConnectionInfo`.
    pub struct Connection<IO> {
        #[pin]
        io: IO,
        info: ConnectionInfo,
    }
}

impl<IO> Connection<IO> {
    pub fn new(io: IO, peer: Option<SocketAddr>) -> Self {
        Self {
            io,
            info: ConnectionInfo {
                peer,
                callers: Arc::new(CallerMemo::new()),
            },
        }
    }
}

impl<IO> Connected for Connection<IO> {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl<IO: AsyncRead> AsyncRead for Connection<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite> AsyncWrite for Connection<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    /// No, deliberately: h2 then copies DATA payloads of up to 1 KiB into
    /// its write buffer (with vectored writes it chains any payload of 256
    /// bytes or more and must write it out before it can queue the next
    /// frame). A gateway's `Check` reply is about 360 bytes: chained, each
    /// reply cost a write system call of its own; copied, the replies of a
    /// batch of streams leave in one write. Larger payloads (a Search page)
    /// are still chained, and go out in two writes instead of one `writev`.
    fn is_write_vectored(&self) -> bool {
        false
    }
}
