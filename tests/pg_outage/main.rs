//! PostgreSQL tests that stop the shared server or read its log files: a test
//! target of their own, so that they never run beside the other PostgreSQL
//! tests (`cargo test` runs test targets one after another). The outage test
//! is `#[ignore]`d, since it stops the server every other user of it shares:
//! `.ci/run` runs this target with `--include-ignored` after the main suite.
//!
//! The harness is the main suite's (`tests/api/helpers.rs`,
//! `tests/api/postgres/{harness,trial}.rs`), included by path.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../api/helpers.rs"]
mod helpers;

#[allow(dead_code)]
#[path = "../api/postgres/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../api/postgres/trial.rs"]
mod trial;

/// The same module paths as in the main suite (`crate::postgres::harness`).
mod postgres {
    pub(crate) use crate::{harness, trial};
}

mod outage;
mod server_log;
