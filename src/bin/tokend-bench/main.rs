//! tokend-bench: measures tokend against the server's own
//! `grpc.health.v1.Health/Check`, in one run, on this machine.
//!
//! It starts the release `tokend` binary (found next to this one) on a fresh
//! SQLite database with the default argon2 cost, issues tokens through the
//! generated client, and drives the RPCs with h2load (Debian's
//! `nghttp2-client`), an independent HTTP/2 load generator: gRPC bodies are
//! framed by hand and sent with `-d`. Each phase is a module of its own:
//!
//! - `hot`: cache-hit Validate vs Health/Check, unbound and IP-bound, and
//!   floods (and the whole run);
//! - `restart`: Validate through restarts, miss latency, start-up with a
//!   million tokens (`startup`), a flood on a cold id;
//! - `tls`: the Validate vs Health/Check comparison over TLS;
//! - `gateway`: ext_authz Check vs Health/Check, and forward-auth through
//!   real nginx against the same nginx without auth;
//! - `memory`: memory per cached token, in a child process;
//! - `search`: Search at a million tokens (SQLite, and PostgreSQL with
//!   `--postgres URL`) and the write cost of the search indexes.
//! - `move`: `tokend move` of a large SQLite store into PostgreSQL, timed;
//! - `backup`: `tokend backup` under Validate and write load, and its restore;
//! - `seed`: the bulk-seeded stores those two start from;
//! - `watch`: WatchEvents across 3 PostgreSQL replica processes (delivery
//!   latency from one replica's commit to another's watcher, and a watcher
//!   killed and resumed at random points, one replica killed);
//! - `instructions`: instructions per request under callgrind (not part of
//!   the full run).
//!
//! Every server it starts has its Prometheus listener on.
//!
//! Usage: `cargo build --release && target/release/tokend-bench [--quick]`
//!        `target/release/tokend-bench restart [--quick]`
//!        `target/release/tokend-bench startup [TOKENS]`
//!        `target/release/tokend-bench validate [--quick]` (cache-hit Validate,
//!        unbound and IP-bound, vs Health/Check only)
//!        `target/release/tokend-bench tls [--quick]`
//!        `target/release/tokend-bench gateway [--quick]`
//!        `target/release/tokend-bench instructions [--quick]` (valgrind)
//!        `target/release/tokend-bench memory [ENTRIES]`
//!        `target/release/tokend-bench move [TOKENS]`
//!        `target/release/tokend-bench backup [TOKENS]`
//!        `target/release/tokend-bench search [--postgres URL]` (or the variable below)
//!        `target/release/tokend-bench watch [--quick] [--postgres URL]` (or the variable below)
//! `TOKEND_BENCH_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`)
//! adds the PostgreSQL figures: a fresh database is made beside that one.
//!
//! Every figure it prints is a measurement of this run; nothing is assumed.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod backup;
mod gateway;
mod hot;
mod instructions;
mod load;
mod memory;
mod r#move;
mod pg;
mod restart;
mod search;
mod seed;
mod server;
mod startup;
mod tls;
mod watch;

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
    let postgres = args
        .iter()
        .position(|a| a == "--postgres")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("TOKEND_BENCH_POSTGRES_URL").ok());
    if args.first().map(String::as_str) == Some("search") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(search::run(postgres));
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
        Some("startup") => rt.block_on(async {
            let n = args
                .get(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(1_000_000);
            let dir = scratch_dir();
            let figures = startup::run(&dir, n).await;
            println!("\n== Summary");
            startup::summarise(&figures);
            let _ = std::fs::remove_dir_all(&dir);
        }),
        Some("restart") => rt.block_on(async {
            let dir = scratch_dir();
            let figures = restart::run(quick, &dir).await;
            println!("\n== Summary");
            restart::summarise(&figures);
            let _ = std::fs::remove_dir_all(&dir);
        }),
        Some("tls") => rt.block_on(tls::alone(quick)),
        Some("gateway") => rt.block_on(gateway::alone(quick)),
        Some("watch") => rt.block_on(watch::alone(quick, postgres)),
        Some("instructions") => rt.block_on(instructions::run(quick)),
        Some("validate") => rt.block_on(hot::validate_alone(quick)),
        _ => rt.block_on(hot::run(quick)),
    }
    ExitCode::SUCCESS
}

/// A fresh folder for this run's databases and logs.
fn scratch_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tokend-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
