//! Structured logging with tracing. Logs go to stderr so stdout stays clean for
//! `tokend bootstrap`'s token. Nothing logged anywhere carries token material:
//! handlers record ids only, secrets have redacting `Debug`s, and SQL is
//! logged as statement text with bound (never inlined) values.
//!
//! The text format is coloured only when stderr is a terminal (and `NO_COLOR`
//! is not set): files, pipes and log collectors get plain text.
//!
//! `metrics` holds every Prometheus metric and its recording helper; `rpc`
//! is the tower layer that counts every RPC by method and gRPC code.

pub mod metrics;
pub mod rpc;

use std::io::{IsTerminal, Write};

use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

use crate::config::LogFormat;

/// Installs the global subscriber writing to stderr; a no-op if one is
/// already installed.
pub fn init_stderr(format: LogFormat, filter: &str) {
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
    );
    install(format, filter, std::io::stderr, colour);
}

/// Installs the global subscriber writing to `writer`, without colour codes
/// (the writer is not known to be a terminal); a no-op if one is already
/// installed.
pub fn init<W>(format: LogFormat, filter: &str, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    install(format, filter, writer, false);
}

/// ANSI colour for a terminal, unless the user opted out (no-color.org).
fn use_colour(is_terminal: bool, no_color: bool) -> bool {
    is_terminal && !no_color
}

fn install<W>(format: LogFormat, filter: &str, writer: W, colour: bool)
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
        .with_ansi(colour)
        .with_target(true);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::use_colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, false));
        assert!(!use_colour(false, false));
        assert!(!use_colour(true, true));
        assert!(!use_colour(false, true));
    }
}
