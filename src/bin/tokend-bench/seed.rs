//! A large store, quickly: tokens written straight through the store's bulk
//! import (`Store::import_tokens`, batches of 5,000 with their audit events
//! and owner counts), not through the API.
//!
//! Every seeded token shares ONE secret, hashed ONCE with a cheap argon2id
//! (m=256 KiB, t=1): argon2 per row at the default cost would take hours for
//! a million tokens. Their values differ (each has its own id and checksum)
//! and each carries a real keyed verifier under the key file written here, so
//! a server given that key validates them without argon2 (and without the
//! key, through that one cheap hash).

use std::{collections::BTreeMap, time::Instant};

use chrono::Duration as Span;
use tokend::{
    domain::{
        AccountId, OwnerId, Token, TokenState, TokenValue,
        token::{Actor, SecretHash},
    },
    store::{Store, StoreConfig},
    validation::{
        hasher::{Hasher, HasherConfig},
        verifier::Keyring,
    },
};

/// What a seeded store holds that a benchmark needs to know.
pub struct Seeded {
    /// A `tokens:platform` token (the first one seeded).
    pub caller: String,
    /// The verifier key file the seeded verifiers are under.
    pub key_file: std::path::PathBuf,
    /// Values of one block of 100 consecutive tokens in every
    /// `sample_every` blocks (so 1% revoked and 1% disabled among them too),
    /// with the state each was given.
    pub sample: Vec<(String, TokenState)>,
}

/// Seeds `n` tokens (1% revoked, 1% disabled, the rest active) into the
/// store at `url`, which is migrated first; writes a new verifier key file
/// at `key_file`.
pub async fn seed(url: &str, key_file: &std::path::Path, n: usize, sample_every: usize) -> Seeded {
    let line = Keyring::generate_line();
    std::fs::write(key_file, format!("{line}\n")).expect("write the key file");
    let keyring = Keyring::parse(&line).expect("a generated key parses");
    let store = Store::connect(&StoreConfig {
        url: url.to_owned().into(),
        max_connections: 2,
        timeout: std::time::Duration::from_secs(60),
    })
    .await
    .expect("connect");
    store.migrate().await.expect("migrate");
    let hasher = Hasher::start(&HasherConfig {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
        workers: 1,
        queue: 1,
    })
    .expect("hasher");
    let shared = TokenValue::generate("tk").expect("random");
    let hash: SecretHash = hasher.hash(shared.secret()).await.expect("argon2");
    println!("seed: one argon2id hash (m=256 KiB, t=1) shared by all {n} seeded tokens");

    let actor = Actor::Tool {
        name: "tokend-bench".into(),
        owner_id: "ops".into(),
    };
    let started = Instant::now();
    // At the store's precision (microseconds), as the service writes times.
    let now = tokend::manage::now();
    let mut seeded = Seeded {
        caller: String::new(),
        key_file: key_file.to_owned(),
        sample: Vec::new(),
    };
    let mut batch = Vec::with_capacity(5000);
    for i in 0..n {
        let value = shared.with_id(TokenValue::generate("tk").expect("random").id());
        let state = match i % 100 {
            _ if i == 0 => TokenState::Active,
            1 => TokenState::Revoked,
            2 => TokenState::Disabled,
            _ => TokenState::Active,
        };
        if i == 0 {
            seeded.caller = value.expose();
        } else if ((i - 1) / 100) % sample_every.max(1) == 0 {
            seeded.sample.push((value.expose(), state));
        }
        let created = now - Span::milliseconds((n - i) as i64);
        let token = Token {
            id: value.id(),
            account_id: AccountId::from_stored(format!("acct-{:03}", i % 100)),
            owner_id: OwnerId::from_stored(format!("user-{:05}", i % 10_000)),
            created_by: "ops".into(),
            updated_by: "ops".into(),
            name: format!("seeded token {i}"),
            description: String::new(),
            modules: if i == 0 {
                vec!["tokens:platform".into()]
            } else {
                vec!["billing:read".into(), "reports:write".into()]
            },
            api_version: "2026-01-01".into(),
            metadata: BTreeMap::from([("team".to_owned(), "bench".to_owned())]),
            state,
            state_reason: String::new(),
            secret_hash: hash.clone(),
            verifier: Some(keyring.seal(&value)),
            previous_secret: None,
            hint: value.hint(),
            created_at: created,
            updated_at: created,
            last_used_at: None,
            expires_at: None,
            disabled_at: (state == TokenState::Disabled).then_some(created),
            revoked_at: (state == TokenState::Revoked).then_some(created),
            allowed_cidrs: Vec::new(),
        };
        batch.push(token);
        if batch.len() == 5000 || i + 1 == n {
            store
                .import_tokens(&batch, &actor, "seeded")
                .await
                .expect("bulk import");
            batch.clear();
        }
        if (i + 1) % 200_000 == 0 {
            println!(
                "seed: {} tokens in {:.1} s",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "seed: {n} tokens (with their verifiers, audit events and owner counts) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    store.close().await;
    seeded
}
