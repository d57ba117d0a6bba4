//! Memory per cached token: a child process (`tokend-bench memory`) fills a
//! Validate cache with realistic entries and reports its RSS growth, so the
//! figure holds nothing but the cache.

use std::{collections::BTreeMap, fs, process::Command, sync::Arc, time::Duration};

use tokend::{
    domain::{AccountId, OwnerId, Token, TokenState, TokenValue, token::SecretHash},
    validation::{
        cache::{CacheConfig, VerifiedCache},
        verifier::Keyring,
    },
};

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let statm = fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("statm rss");
    pages * 4096
}

/// Memory per cached token: fills a cache with `n` realistic entries.
pub fn memory(n: usize) {
    // Measured before the cache exists, so its own tables count too.
    let before = rss_bytes();
    let keyring = Arc::new(Keyring::parse(&Keyring::generate_line()).expect("key"));
    let cache = VerifiedCache::new(
        CacheConfig {
            capacity: n,
            negative_capacity: 16,
            negative_ttl: Duration::from_secs(30),
            unknown_ttl: Duration::from_secs(10),
            failure_window: Duration::from_secs(10),
            failures_per_window: 5,
        },
        Arc::clone(&keyring),
        tokend::api::wire::encode_verified,
    );
    let now = chrono::Utc::now();
    for i in 0..n {
        let value = TokenValue::generate("tk").expect("random");
        let token = Token {
            id: value.id(),
            account_id: AccountId::from_stored(format!("acct-{:05}", i % 50_000)),
            owner_id: OwnerId::from_stored(format!("user-{:07}", i)),
            created_by: String::new(),
            updated_by: String::new(),
            name: String::new(),
            description: String::new(),
            modules: vec!["billing:read".into(), "reports:write".into()],
            api_version: "2024-06-01".into(),
            metadata: BTreeMap::from([("team".to_owned(), "payments".to_owned())]),
            state: TokenState::Active,
            state_reason: String::new(),
            secret_hash: SecretHash::new(format!("$argon2id$v=19$m=19456,t=2,p=1${i}")),
            verifier: Some(keyring.seal(&value)),
            previous_secret: None,
            hint: String::new(),
            created_at: now,
            updated_at: now,
            last_used_at: None,
            expires_at: None,
            disabled_at: None,
            revoked_at: None,
            allowed_cidrs: Vec::new(),
        };
        // As the warm start builds entries: straight from stored rows.
        assert!(cache.load(&token.view().to_record()));
    }
    let after = rss_bytes();
    let entries = cache.len();
    println!(
        "memory: {entries} cached tokens (2 modules, 1 metadata pair, ~10-12 char account/owner ids)"
    );
    println!(
        "memory: RSS before {:.1} MiB, after {:.1} MiB",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    println!(
        "memory: {:.0} bytes per cached token",
        (after - before) as f64 / entries.max(1) as f64
    );
}

/// Runs `tokend-bench memory` as a child, so the RSS it measures holds nothing
/// but the cache; echoes its report and returns the bytes per cached token.
pub fn memory_in_child() -> f64 {
    let out = Command::new(std::env::current_exe().expect("own path"))
        .arg("memory")
        .output()
        .expect("run tokend-bench memory");
    assert!(out.status.success(), "tokend-bench memory failed");
    let report = String::from_utf8_lossy(&out.stdout);
    print!("{report}");
    report
        .lines()
        .find_map(|l| {
            l.strip_prefix("memory: ")?
                .strip_suffix(" bytes per cached token")?
                .parse()
                .ok()
        })
        .expect("bytes per cached token in the memory report")
}
