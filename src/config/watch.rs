//! The `--watch-*` flags: WatchEvents' bounds on slow clients.

use std::time::Duration;

use clap::Args;

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

#[derive(Debug, Clone, Args)]
pub struct WatchFlags {
    /// Events queued per WatchEvents client; its memory bound.
    #[arg(
        long,
        env = "TOKEND_WATCH_BUFFER",
        default_value_t = 256,
        global = true
    )]
    pub watch_buffer: usize,
    /// A WatchEvents client whose queue stays full this long is ended with
    /// the id to resume from.
    #[arg(long, env = "TOKEND_WATCH_LAG_TIMEOUT", default_value = "10s", value_parser = duration, global = true)]
    pub watch_lag_timeout: Duration,
}
