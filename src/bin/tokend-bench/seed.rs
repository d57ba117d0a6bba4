//! A large store, quickly: tokens written straight through the store's bulk
//! path (`Store::insert_tokens_bulk`, batches of 5,000 with their audit
//! events, change-log rows and owner counts), not through the API.
//!
//! Every seeded token shares ONE secret, hashed ONCE with a cheap argon2id
//! (m=256 KiB, t=1): argon2 per row at the default cost would take hours for
//! a million tokens. Their values differ (each has its own id and checksum)
//! and all validate; verifying one costs that cheap argon2 on a cache miss.

use std::{collections::BTreeMap, time::Instant};

use chrono::Duration as Span;
use tokend::{
    domain::{
        EventKind, NewEvent, Token, TokenState, TokenValue,
        token::{Actor, SecretHash},
    },
    store::{Store, StoreConfig},
    validation::hasher::{Hasher, HasherConfig},
};

/// What a seeded store holds that a benchmark needs to know.
pub struct Seeded {
    /// A `tokens:platform` token (the first one seeded).
    pub caller: String,
    /// Values of one block of 100 consecutive tokens in every
    /// `sample_every` blocks (so 1% revoked and 1% disabled among them too),
    /// with the state each was given.
    pub sample: Vec<(String, TokenState)>,
}

/// Seeds `n` tokens (1% revoked, 1% disabled, the rest active) into the
/// store at `url`, which is migrated first.
pub async fn seed(url: &str, n: usize, sample_every: usize) -> Seeded {
    let store = Store::connect(&StoreConfig {
        url: url.to_owned(),
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

    let started = Instant::now();
    // At the store's precision (microseconds), as the service writes times.
    let now = tokend::manage::now();
    let mut seeded = Seeded {
        caller: String::new(),
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
            account_id: format!("acct-{:03}", i % 100),
            owner_id: format!("user-{:05}", i % 10_000),
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
            previous_secret: None,
            hint: value.hint(),
            created_at: created,
            updated_at: created,
            last_used_at: None,
            expires_at: None,
            disabled_at: (state == TokenState::Disabled).then_some(created),
            revoked_at: (state == TokenState::Revoked).then_some(created),
        };
        let event = NewEvent {
            kind: EventKind::Issued,
            actor: Actor {
                token_id: "bench".into(),
                owner_id: "ops".into(),
            },
            detail: "seeded".into(),
        };
        batch.push((token, event));
        if batch.len() == 5000 || i + 1 == n {
            store.insert_tokens_bulk(&batch).await.expect("bulk insert");
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
        "seed: {n} tokens (with their events, change-log rows and owner counts) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    store.close().await;
    seeded
}
