//! Structured logging with tracing. Logs go to stderr so stdout stays clean for
//! `tokend bootstrap`'s token. Nothing logged anywhere carries token material:
//! handlers record ids only, secrets have redacting `Debug`s, and SQL is
//! logged as statement text with bound (never inlined) values.
//!
//! `metrics` holds every Prometheus metric and its recording helper; `rpc`
//! is the tower layer that counts every RPC by method and gRPC code.

pub mod metrics;
pub mod rpc;

use std::io::Write;

use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

use crate::config::LogFormat;

/// Installs the global subscriber; a no-op if one is already installed.
pub fn init<W>(format: LogFormat, filter: &str, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        let _ = writeln!(
            std::io::stderr(),
            "invalid log filter {filter:?} ({e}); using \"info\""
        );
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
