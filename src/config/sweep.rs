//! The `--sweep*` flags: the hygiene sweeper (expiry notices, auto-disable
//! of unused tokens; `manage::sweeper`).

use std::time::Duration;

use clap::{ArgAction, Args};

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

#[derive(Debug, Clone, Args)]
pub struct SweepFlags {
    /// Run the hygiene sweeper (expiry notices, auto-disable of unused
    /// tokens). On PostgreSQL one replica sweeps at a time, so leaving it on
    /// everywhere is safe; `false` turns it off on this replica.
    #[arg(long, env = "TOKEND_SWEEP", default_value_t = true, action = ArgAction::Set, global = true)]
    pub sweep: bool,
    /// How often the sweeper looks for due notices and unused tokens.
    #[arg(long, env = "TOKEND_SWEEP_INTERVAL", default_value = "60s", value_parser = duration, global = true)]
    pub sweep_interval: Duration,
    /// Tokens per sweeper transaction.
    #[arg(long, env = "TOKEND_SWEEP_BATCH", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=10_000), global = true)]
    pub sweep_batch: u64,
}
