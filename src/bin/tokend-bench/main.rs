//! tokend-bench: measures tokend against the server's own
//! `grpc.health.v1.Health/Check`, in one run, on this machine.
//!
//! It starts the release `tokend` binary (found next to this one) on a fresh
//! SQLite database with the default argon2 cost, issues tokens through the
//! generated client, and drives the RPCs with h2load (Debian's
//! `nghttp2-client`), an independent HTTP/2 load generator: gRPC bodies are
//! framed by hand and sent with `-d`. Each phase is a module of its own:
//!
//! - `hot`: cache-hit Validate vs Health/Check, floods, miss cost;
//! - `memory`: memory per cached token, in a child process;
//! - `move`: `tokend move` of a large SQLite store into PostgreSQL, timed;
//! - `backup`: `tokend backup` under Validate and write load, and its restore;
//! - `seed`: the bulk-seeded stores those two start from.
//!
//! Usage: `cargo build --release && target/release/tokend-bench [--quick]`
//!        `target/release/tokend-bench memory [ENTRIES]`
//!        `target/release/tokend-bench move [TOKENS]`
//!        `target/release/tokend-bench backup [TOKENS]`
//!
//! Every figure it prints is a measurement of this run; nothing is assumed.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod backup;
mod hot;
mod load;
mod memory;
mod r#move;
mod seed;
mod server;

use std::process::ExitCode;

const HOT_TOKENS: usize = 1000;
const LOAD_PROCESSES: usize = 4;
const STREAMS: u32 = 32;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("memory") {
        let n = args
            .get(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(1_000_000);
        memory::memory(n);
        return ExitCode::SUCCESS;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let count = |default: usize| {
        args.get(1)
            .and_then(|s| s.replace('_', "").parse().ok())
            .unwrap_or(default)
    };
    match args.first().map(String::as_str) {
        Some("move") => rt.block_on(r#move::run(count(1_000_000))),
        Some("backup") => rt.block_on(backup::run(count(backup::DEFAULT_TOKENS))),
        _ => rt.block_on(hot::run(quick)),
    }
    ExitCode::SUCCESS
}
