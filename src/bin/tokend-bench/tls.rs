//! TLS: cache-hit Validate against Health/Check on a server that serves TLS
//! (a certificate made for the run, `tokend::tls::test_pki`), with h2load
//! speaking TLS 1.3 and HTTP/2 over ALPN, the same settings for both RPCs, in
//! interleaved rounds; metrics on, as everywhere in the benchmark.
//!
//! Usage: part of the full run; alone: `target/release/tokend-bench tls [--quick]`.

use std::path::Path;

use crate::{
    LOAD_PROCESSES,
    load::{health_and_validate_loads, interleaved, summary_line},
    server::{bootstrap, issue_caller, issue_tokens, start_tls_server, tls_files, warm},
};

/// Rounds of the TLS comparison (`--quick`: 2): ten, as for the plaintext
/// comparison, since single rounds on this VM swing by 0.1 either way.
pub const TLS_ROUNDS: usize = 10;

/// Runs the TLS rounds on a fresh TLS server over the database in `dir`;
/// returns (throughput ratio, p99 ratio) per round.
pub async fn run(dir: &Path, rounds: usize, seconds: u32) -> Vec<(f64, f64)> {
    println!(
        "\n== TLS: Validate (cache hit) vs Health/Check over TLS (h2load, ALPN h2), same server, {rounds} interleaved rounds"
    );
    let files = tls_files(dir);
    let platform = bootstrap(dir);
    let server = start_tls_server(dir, "tls", &files).await;
    let mut client = server.client().await;
    let caller = issue_caller(&mut client, &platform).await;
    let hot = issue_tokens(&client, &platform, LOAD_PROCESSES * 8).await;
    warm(&mut client, &caller, &hot).await;
    println!(
        "TLS server: {} tokens issued and validated once over TLS",
        hot.len()
    );
    let (health, validate) = health_and_validate_loads(&hot, 1);
    let ratios = interleaved(&server, &caller, &health, &validate, rounds, seconds, dir);
    println!("{}", server.metrics_line());
    println!("server: {}", server.stop());
    ratios
}

/// The summary lines of the TLS rounds.
pub fn summary(ratios: &[(f64, f64)]) {
    let throughput: Vec<f64> = ratios.iter().map(|r| r.0).collect();
    let p99: Vec<f64> = ratios.iter().map(|r| r.1).collect();
    summary_line("TLS: Validate/Health throughput", &throughput, ">= 0.9");
    summary_line("TLS: Validate/Health p99", &p99, "(no target)");
}

/// `tokend-bench tls`: this phase alone, on a fresh database.
pub async fn alone(quick: bool) {
    let dir = std::env::temp_dir().join(format!("tokend-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (rounds, seconds) = if quick { (2, 2) } else { (TLS_ROUNDS, 4) };
    let ratios = run(&dir, rounds, seconds).await;
    println!("\n== Summary (median over interleaved rounds; every round is printed above)");
    summary(&ratios);
    let _ = std::fs::remove_dir_all(&dir);
}
