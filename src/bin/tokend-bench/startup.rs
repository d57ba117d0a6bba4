//! Start-up with many live tokens: how long until health reports SERVING
//! (the warm start loads them all into the Validate cache first), the RSS
//! after it, and where the time goes (reading rows vs building entries,
//! measured in this process on the same store).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use tokend::{
    store::{Store, StoreConfig, WarmQuery},
    validation::{
        cache::{CacheConfig, VerifiedCache},
        verifier::Keyring,
    },
};

use crate::{
    restart::{Target, seed},
    server::{bootstrap_on, database_url, start_server_on},
};

pub struct Startup {
    pub tokens: usize,
    pub ready_after: Duration,
    pub rss: u64,
}

pub fn summarise(s: &Startup) {
    println!(
        "{:<56} {:.1} s, RSS {:.0} MiB  target <= 20 s",
        format!("start-up to SERVING with {} live tokens", s.tokens),
        s.ready_after.as_secs_f64(),
        s.rss as f64 / 1048576.0
    );
}

pub async fn run(dir: &Path, n: usize) -> Startup {
    println!("\n== Start-up with {n} live tokens: time to SERVING and RSS after the warm start");
    let big = dir.join("startup");
    std::fs::create_dir_all(&big).expect("dir");
    let url = database_url(&big);
    bootstrap_on(&url, &[]);
    let target = Target {
        url: url.clone(),
        key_file: big.join("tokend.key"),
    };
    let started = Instant::now();
    seed(&target, n, false).await;
    println!(
        "seeded {n} tokens in {:.1} s (real verifiers; one shared cheap argon2id hash, which no measurement here uses)",
        started.elapsed().as_secs_f64()
    );
    breakdown(&target, n).await;
    let server = start_server_on(&big, "startup", &url, &target.env(&[])).await;
    let ready_after = server.ready_after;
    let rss = server.rss_bytes();
    let loaded = server
        .log()
        .lines()
        .find(|l| l.contains("warm start:") || l.contains("warm start failed"))
        .unwrap_or_default()
        .to_owned();
    println!(
        "server: SERVING after {:.2} s, RSS {:.0} MiB\nserver: {loaded}",
        ready_after.as_secs_f64(),
        rss as f64 / 1048576.0
    );
    server.stop();
    let _ = std::fs::remove_dir_all(&big);
    Startup {
        tokens: n,
        ready_after,
        rss,
    }
}

/// The warm start's two halves, timed apart in this process.
async fn breakdown(target: &Target, n: usize) {
    let store = Store::connect(&StoreConfig {
        url: target.url.clone().into(),
        max_connections: 2,
        timeout: Duration::from_secs(300),
    })
    .await
    .expect("store");
    let keyring =
        Keyring::parse(&std::fs::read_to_string(&target.key_file).expect("key")).expect("key");
    let now = chrono::Utc::now();
    let query = WarmQuery {
        key_ids: vec![keyring.current_id().to_owned()],
        since: now - chrono::Duration::days(30),
        now,
        limit: n as u64 + 10,
    };
    let started = Instant::now();
    let mut rows = store.warm_tokens(&query).await.expect("query");
    let mut tokens = Vec::with_capacity(n);
    while let Some(t) = rows.next().await {
        tokens.push(t.expect("row"));
    }
    drop(rows);
    let read = started.elapsed();
    let cache = VerifiedCache::new(
        CacheConfig {
            capacity: n + 10,
            negative_capacity: 16,
            negative_ttl: Duration::from_secs(30),
            unknown_ttl: Duration::from_secs(10),
            failure_window: Duration::from_secs(10),
            failures_per_window: 5,
        },
        std::sync::Arc::new(keyring),
    );
    let started = Instant::now();
    let loaded = tokens.iter().filter(|t| cache.load(t)).count();
    let build = started.elapsed();
    println!(
        "in-process: reading {} rows took {:.2} s, building {loaded} cache entries {:.2} s",
        tokens.len(),
        read.as_secs_f64(),
        build.as_secs_f64()
    );
    store.close().await;
}
