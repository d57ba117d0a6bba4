//! `tokend-bench move [TOKENS]`: the growth path, timed. Seeds a SQLite store
//! with TOKENS tokens (default 1,000,000; see `seed` for how), then times the
//! release `tokend move` into a fresh PostgreSQL database, exactly as an
//! operator runs it, and prints its report. Then a server on PostgreSQL,
//! given the store's verifier key file, validates a sample of 10,000 of the
//! moved tokens; the argon2 verifications that took must be 0.
//!
//! PostgreSQL: `TOKEND_BENCH_POSTGRES_URL`, else `TOKEND_TEST_POSTGRES_URL`,
//! else `postgres://postgres@127.0.0.1:5432/test`; the benchmark creates its
//! own database there and drops it at the end.

use std::{
    process::{Command, Stdio},
    time::Instant,
};

use sea_orm::{ConnectionTrait, Database};
use tokend::{domain::TokenState, pb};

use crate::{
    seed::seed,
    server::{start_server_on, tokend_exe, validate},
};

pub const TARGET_SECONDS: f64 = 300.0;

fn postgres_base() -> String {
    std::env::var("TOKEND_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("TOKEND_TEST_POSTGRES_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Creates (or, with `drop`, drops) the database `name` next to `base`'s.
async fn admin(base: &str, sql: String) {
    let db = Database::connect(base)
        .await
        .expect("connect to PostgreSQL");
    db.execute_unprepared(&sql).await.expect("admin statement");
    db.close().await.ok();
}

pub async fn run(tokens: usize) {
    let dir = std::env::temp_dir().join(format!("tokend-bench-move-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sqlite = format!("sqlite://{}?mode=rwc", dir.join("source.db").display());
    let base = postgres_base();
    let name = format!("tokend_bench_move_{}", std::process::id());
    let (prefix, _) = base
        .rsplit_once('/')
        .expect("postgres URL ends with /database");
    let target = format!("{prefix}/{name}");

    println!("== Move: {tokens} tokens, SQLite -> PostgreSQL (tokend move)");
    let blocks = (tokens / 100 / 100).max(1);
    let seeded = seed(&sqlite, &dir.join("tokend.key"), tokens, blocks).await;
    let size = std::fs::metadata(dir.join("source.db")).map_or(0, |m| m.len());
    println!(
        "source: SQLite file of {:.0} MiB",
        size as f64 / (1024.0 * 1024.0)
    );

    // Made just before the move (other processes on a shared server may
    // tidy up idle benchmark databases while the seed runs).
    admin(&base, format!("CREATE DATABASE {name}")).await;
    let started = Instant::now();
    let out = Command::new(tokend_exe())
        .args(["move", "--from", &sqlite])
        .env("TOKEND_MOVE_TO", &target)
        .env("TOKEND_LOG", "warn")
        .stderr(Stdio::inherit())
        .output()
        .expect("run tokend move");
    let took = started.elapsed().as_secs_f64();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "tokend move failed");
    println!(
        "move of {tokens} tokens SQLite -> PostgreSQL: {took:.1} s (target <= {TARGET_SECONDS:.0} s: {})",
        if took <= TARGET_SECONDS {
            "met"
        } else {
            "NOT met"
        }
    );

    // Validate a sample on PostgreSQL.
    // PostgreSQL replicas need the store's key (README, "Day two").
    let key_env = [(
        "TOKEND_VERIFIER_KEY_FILE",
        seeded.key_file.display().to_string(),
    )];
    let server = start_server_on(&dir, "pg-server", &target, &key_env).await;
    let client = server.client().await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let chunk = seeded.sample.len().div_ceil(16).max(1);
    for part in seeded.sample.chunks(chunk) {
        let part = part.to_vec();
        let mut c = client.clone();
        let caller = seeded.caller.clone();
        tasks.push(tokio::spawn(async move {
            let mut wrong = 0usize;
            for (value, state) in part {
                let r = validate(&mut c, &caller, &value, &[]).await;
                let expected = match state {
                    TokenState::Active => pb::Reason::Valid,
                    TokenState::Disabled => pb::Reason::Disabled,
                    TokenState::Revoked => pb::Reason::Revoked,
                };
                if r.reason != expected as i32 {
                    wrong += 1;
                }
            }
            wrong
        }));
    }
    let mut wrong = 0;
    for t in tasks {
        wrong += t.await.expect("validate task");
    }
    let revoked = seeded
        .sample
        .iter()
        .filter(|(_, s)| *s == TokenState::Revoked)
        .count();
    println!(
        "sample of {} moved tokens validated on PostgreSQL in {:.1} s: {} as expected ({} of them revoked, answered REVOKED), {wrong} not",
        seeded.sample.len(),
        started.elapsed().as_secs_f64(),
        seeded.sample.len() - wrong,
        revoked
    );
    let stopped = server.stop();
    println!("server: {stopped}");
    let argon2: Option<u64> = stopped
        .split_whitespace()
        .find_map(|f| f.strip_prefix("argon2_verifications="))
        .and_then(|n| n.parse().ok());
    println!(
        "argon2 verifications on PostgreSQL for the moved sample: {} (target 0: the verifiers came along)",
        argon2.map_or("unknown".to_owned(), |n| n.to_string())
    );
    admin(
        &base,
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(wrong, 0, "moved tokens answered differently");
    assert_eq!(argon2, Some(0), "argon2 ran for moved tokens");
}
