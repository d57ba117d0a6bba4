//! The Validate hot path, seen from outside: what a hit, a miss, a rejected
//! value and an unknown id cost (SQL statements and argon2 verifications),
//! singleflight, throttling, the bounded argon2 pool, cache eviction, batched
//! last-used writes, and that no Validate started after a mutation returned
//! sees the old state.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokend::{
    config::Config,
    domain::{TokenId, TokenValue},
    pb::{self},
};
use tonic::{Code, Status};

use crate::helpers::{self, Api, SharedDb, TestApp, spawn_app_with, unknown_value, verifications};

// ---------------------------------------------------------------------------
// Harness for this file
// ---------------------------------------------------------------------------

/// No background flush during the test (the first tick at start-up finds
/// nothing pending), so every statement counted is one the test caused.
fn quiet(c: &mut Config) {
    c.last_used_flush_interval = Duration::from_secs(3600);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cost {
    statements: u64,
    verifications: u64,
}

fn cost(app: &TestApp) -> Cost {
    Cost {
        statements: app.store.statements_executed(),
        verifications: verifications(app),
    }
}

fn cost_since(app: &TestApp, before: Cost) -> Cost {
    let now = cost(app);
    Cost {
        statements: now.statements - before.statements,
        verifications: now.verifications - before.verifications,
    }
}

const FREE: Cost = Cost {
    statements: 0,
    verifications: 0,
};

/// A well-formed value for `id` with a secret that is not the token's.
fn wrong_value_for(id: &str) -> String {
    TokenValue::generate_for("tk", TokenId::parse(id).unwrap())
        .unwrap()
        .expose()
}

fn assert_valid(r: &pb::ValidateResponse, id: &str) {
    assert!(r.valid, "expected VALID, got {r:?}");
    assert_eq!(r.reason(), pb::Reason::Valid);
    assert_eq!(r.token_id, id);
}

/// UNKNOWN carries no token fields.
fn assert_unknown(r: &pb::ValidateResponse) {
    assert!(!r.valid, "expected UNKNOWN, got {r:?}");
    assert_eq!(r.reason(), pb::Reason::Unknown);
    assert_eq!(r.token_id, "");
    assert_eq!(r.account_id, "");
    assert!(r.modules.is_empty());
}

fn to_utc(t: &prost_types::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.seconds, t.nanos as u32).unwrap()
}

async fn last_used(app: &TestApp, caller: &str, id: &str) -> Option<DateTime<Utc>> {
    app.token(caller, id)
        .await
        .unwrap()
        .last_used_at
        .map(|t| to_utc(&t))
}

/// Asserts `at` lies within [from, to], allowing for the store's microsecond
/// precision.
fn assert_between(at: DateTime<Utc>, from: DateTime<Utc>, to: DateTime<Utc>) {
    let slack = chrono::Duration::milliseconds(1);
    assert!(
        at >= from - slack && at <= to + slack,
        "{at} is not within [{from}, {to}]"
    );
}

async fn poll_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Issues `n` tokens for `owner` as the platform caller, concurrently;
/// returns (id, value) pairs.
async fn issue_many(
    app: &TestApp,
    owner: &str,
    modules: &[&str],
    n: usize,
) -> Vec<(String, String)> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let client = app.api.clone();
        let platform = app.platform.clone();
        let req = pb::IssueRequest {
            owner_id: owner.into(),
            name: format!("{owner} {i}"),
            modules: modules.iter().map(|m| (*m).to_owned()).collect(),
            ..Default::default()
        };
        tasks.push(tokio::spawn(
            async move { client.issued(&platform, req).await },
        ));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

// ---------------------------------------------------------------------------
// 1. Hits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_hit_costs_no_statement_and_no_argon2() {
    let app = spawn_app_with(quiet).await;
    let (_, validator) = app.token_for("acme", "gateway", &["tokens:validate"]).await;
    let (id, value) = app.token_for("acme", "alice", &["billing:read"]).await;
    let client = app.api.clone();

    // Issue pre-warmed both the caller and the token: even the first Validate is a hit.
    let before = cost(&app);
    let r = client
        .check(&validator, &value, &["billing:read"])
        .await
        .unwrap();
    assert_valid(&r, &id);
    assert_eq!(cost_since(&app, before), FREE, "first Validate after Issue");

    let before = cost(&app);
    for _ in 0..100 {
        let r = client
            .check(&validator, &value, &["billing:read"])
            .await
            .unwrap();
        assert_valid(&r, &id);
        assert_eq!(r.owner_id, "alice");
        assert_eq!(r.modules, vec!["billing:read".to_owned()]);
    }
    // A rejection judged on the snapshot (missing module) is a hit too.
    let r = client
        .check(&validator, &value, &["billing:write"])
        .await
        .unwrap();
    assert!(!r.valid);
    assert_eq!(r.reason(), pb::Reason::MissingModules);
    assert_eq!(r.token_id, id);
    assert_eq!(cost_since(&app, before), FREE, "101 hits");
}

#[tokio::test]
async fn rotate_and_duplicate_prewarm_the_new_value() {
    let app = spawn_app_with(quiet).await;
    let (_, validator) = app.token_for("acme", "gateway", &["tokens:validate"]).await;
    let (id, _) = app.token_for("acme", "alice", &["billing:read"]).await;
    let client = app.api.clone();

    let rotated = client
        .rotate(
            &app.platform,
            pb::RotateRequest {
                id: id.clone(),
                grace_period: None,
            },
        )
        .await
        .unwrap();
    let before = cost(&app);
    let r = client
        .check(&validator, &rotated.secret, &[])
        .await
        .unwrap();
    assert_valid(&r, &id);
    assert_eq!(
        cost_since(&app, before),
        FREE,
        "first Validate after Rotate"
    );

    let dup = client
        .duplicate(
            &app.platform,
            pb::DuplicateRequest {
                allowed_cidrs: Vec::new(),
                id: id.clone(),
                name: String::new(),
            },
        )
        .await
        .unwrap();
    let dup_id = dup.token.unwrap().id;
    let before = cost(&app);
    let r = client
        .check(&validator, &dup.secret, &["billing:read"])
        .await
        .unwrap();
    assert_valid(&r, &dup_id);
    assert_eq!(
        cost_since(&app, before),
        FREE,
        "first Validate after Duplicate"
    );
}

// ---------------------------------------------------------------------------
// 2. Misses
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_miss_costs_one_lookup_and_no_argon2_then_hits() {
    let db = SharedDb::new();
    let first = db.spawn(quiet).await;
    let (id, value) = first.token_for("acme", "alice", &["billing:read"]).await;
    let (other_id, _) = first.token_for("acme", "bob", &[]).await;

    // A second instance on the same database, without warm start: its cache
    // has never seen the value. The stored verifier settles it.
    let cold = db.spawn_cold(quiet).await;
    let client = cold.api.clone();
    let before = cost(&cold);
    let r = client
        .check(&cold.platform, &value, &["billing:read"])
        .await
        .unwrap();
    assert_valid(&r, &id);
    assert_eq!(r.account_id, "acme");
    assert_eq!(r.owner_id, "alice");
    assert_eq!(
        cost_since(&cold, before),
        Cost {
            statements: 1,
            verifications: 0
        },
        "first Validate on a cold instance: one lookup, no argon2"
    );

    let before = cost(&cold);
    for _ in 0..5 {
        let r = client
            .check(&cold.platform, &value, &["billing:read"])
            .await
            .unwrap();
        assert_valid(&r, &id);
    }
    assert_eq!(cost_since(&cold, before), FREE, "later Validates are hits");

    // A wrong secret for a cold id costs one lookup, then nothing: the row's
    // verifier is cached and answers every further value.
    let before = cost(&cold);
    for _ in 0..5 {
        assert_unknown(
            &client
                .check(&cold.platform, &wrong_value_for(&other_id), &[])
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        cost_since(&cold, before),
        Cost {
            statements: 1,
            verifications: 0
        },
        "five different wrong values for one cold id"
    );
}

#[tokio::test]
async fn a_token_without_a_known_verifier_costs_argon2_once_per_deployment() {
    let db = SharedDb::new();
    let first = db.spawn(quiet).await;
    let (id, value) = first.token_for("acme", "alice", &["billing:read"]).await;
    drop(first);

    // To an instance with another key the token has no usable verifier.
    let legacy = db.spawn_legacy(quiet).await;
    let client = legacy.api.clone();
    let before = cost(&legacy);
    assert_valid(
        &client.check(&legacy.platform, &value, &[]).await.unwrap(),
        &id,
    );
    assert_eq!(
        cost_since(&legacy, before),
        Cost {
            statements: 1,
            verifications: 1
        },
        "one lookup, one argon2"
    );
    let before = cost(&legacy);
    assert_valid(
        &client.check(&legacy.platform, &value, &[]).await.unwrap(),
        &id,
    );
    assert_eq!(cost_since(&legacy, before), FREE, "then a hit");
    // Stopping flushes the verifier it proved, under its own key...
    legacy.stop().await;
    // ...so the next instance with that key needs no argon2.
    let next = db.spawn_legacy(quiet).await;
    let client = next.api.clone();
    let before = cost(&next);
    assert_valid(
        &client.check(&next.platform, &value, &[]).await.unwrap(),
        &id,
    );
    assert_eq!(
        cost_since(&next, before),
        Cost {
            statements: 1,
            verifications: 0
        },
        "the verifier written behind settles it"
    );
}

// ---------------------------------------------------------------------------
// 3. Negative caches
// ---------------------------------------------------------------------------

#[tokio::test]
async fn wrong_values_and_unknown_ids_are_remembered_until_their_ttl() {
    let ttls = |c: &mut Config| {
        quiet(c);
        c.negative_ttl = Duration::from_millis(400);
        c.unknown_ttl = Duration::from_millis(400);
    };
    let db = SharedDb::new();
    let app = db.spawn(ttls).await;
    let (_, validator) = app.token_for("acme", "gateway", &["tokens:validate"]).await;
    let (id, value) = app.token_for("acme", "alice", &[]).await;
    let client = app.api.clone();

    // Wrong values for a cached token: its verifier answers, nothing else runs.
    let before = cost(&app);
    for _ in 0..10 {
        let r = client
            .check(&validator, &wrong_value_for(&id), &[])
            .await
            .unwrap();
        assert_unknown(&r);
    }
    assert_eq!(cost_since(&app, before), FREE, "ten wrong values");

    let unknown = unknown_value();
    let before = cost(&app);
    for _ in 0..10 {
        let r = client.check(&validator, &unknown, &[]).await.unwrap();
        assert_unknown(&r);
    }
    assert_eq!(
        cost_since(&app, before),
        Cost {
            statements: 1,
            verifications: 0
        },
        "ten Validates of an unknown id"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let before = cost(&app);
    for _ in 0..3 {
        assert_unknown(&client.check(&validator, &unknown, &[]).await.unwrap());
    }
    assert_eq!(
        cost_since(&app, before),
        Cost {
            statements: 1,
            verifications: 0
        },
        "after the TTL the unknown id is looked up again, once"
    );
    drop(app);

    // Where only argon2 can tell (no usable verifier), a rejected value is
    // remembered: argon2 once per value and TTL.
    let app = db.spawn_legacy(ttls).await;
    let client = app.api.clone();
    let wrong = wrong_value_for(&id);
    let before = cost(&app);
    for _ in 0..10 {
        let r = client.check(&app.platform, &wrong, &[]).await.unwrap();
        assert_unknown(&r);
    }
    assert_eq!(
        cost_since(&app, before),
        Cost {
            statements: 1,
            verifications: 1
        },
        "ten identical wrong values without a verifier"
    );

    // The real value is unaffected by the remembered failure on its id.
    let before = cost(&app);
    assert_valid(
        &client.check(&app.platform, &value, &[]).await.unwrap(),
        &id,
    );
    assert_eq!(
        cost_since(&app, before),
        Cost {
            statements: 1,
            verifications: 1
        },
        "the real value: one lookup (for the hash) and argon2"
    );
    // Once proven, wrong values are settled by the proven digest.
    let before = cost(&app);
    assert_unknown(
        &client
            .check(&app.platform, &wrong_value_for(&id), &[])
            .await
            .unwrap(),
    );
    assert_eq!(cost_since(&app, before), FREE);
}

// ---------------------------------------------------------------------------
// 4. Throttling
// ---------------------------------------------------------------------------

#[tokio::test]
async fn repeated_failures_on_one_id_throttle_argon2_until_the_window_ends() {
    let window = Duration::from_millis(800);
    let db = SharedDb::new();
    let first = db.spawn(quiet).await;
    let (id, value) = first.token_for("acme", "alice", &[]).await;
    let (other_id, other_value) = first.token_for("acme", "bob", &[]).await;
    drop(first);
    // Only tokens argon2 must check (no usable verifier) can be throttled.
    let app = db
        .spawn_legacy(|c| {
            quiet(c);
            c.failures_per_window = 3;
            c.failure_window = window;
        })
        .await;
    let validator = app.platform.clone();
    let client = app.api.clone();

    let started = Instant::now();
    let first_wrong = wrong_value_for(&id);
    let before = cost(&app);
    assert_unknown(&client.check(&validator, &first_wrong, &[]).await.unwrap());
    for _ in 1..3 {
        let r = client
            .check(&validator, &wrong_value_for(&id), &[])
            .await
            .unwrap();
        assert_unknown(&r);
    }
    assert_eq!(
        cost_since(&app, before).verifications,
        3,
        "the first 3 failures are verified"
    );

    // Further unseen values for this id: RESOURCE_EXHAUSTED, no argon2, no lookup.
    let before = cost(&app);
    for _ in 0..5 {
        let status = client
            .check(&validator, &wrong_value_for(&id), &[])
            .await
            .expect_err("throttled");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    }
    assert_eq!(cost_since(&app, before), FREE, "throttled Validates");

    // An already-rejected value is still answered from the negative cache.
    assert_unknown(&client.check(&validator, &first_wrong, &[]).await.unwrap());
    // Other ids are not throttled.
    let r = client
        .check(&validator, &wrong_value_for(&other_id), &[])
        .await
        .unwrap();
    assert_unknown(&r);
    assert_valid(
        &client.check(&validator, &other_value, &[]).await.unwrap(),
        &other_id,
    );
    assert_eq!(cost_since(&app, before).verifications, 2);
    assert!(
        started.elapsed() < window,
        "test too slow for its window; results above may be meaningless"
    );

    // Once the window has passed, verification resumes: the real value validates.
    tokio::time::sleep(window.saturating_sub(started.elapsed()) + Duration::from_millis(50)).await;
    let before = cost(&app);
    let r = client
        .check(&validator, &wrong_value_for(&id), &[])
        .await
        .unwrap();
    assert_unknown(&r);
    assert_valid(&client.check(&validator, &value, &[]).await.unwrap(), &id);
    assert_eq!(cost_since(&app, before).verifications, 2);
}

// ---------------------------------------------------------------------------
// 5. Singleflight
// ---------------------------------------------------------------------------

async fn validate_concurrently(
    app: &TestApp,
    n: usize,
    caller: &str,
    token: &str,
) -> Vec<Result<pb::ValidateResponse, Status>> {
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let client = app.api.clone();
        let (caller, token, start) = (caller.to_owned(), token.to_owned(), Arc::clone(&start));
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            client.check(&caller, &token, &[]).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn concurrent_misses_of_one_value_share_one_verification() {
    let db = SharedDb::new();
    let first = db.spawn(quiet).await;
    let (id, value) = first.token_for("acme", "alice", &[]).await;
    let (other_id, _) = first.token_for("acme", "bob", &[]).await;
    let wrong = wrong_value_for(&other_id);

    for (legacy, verifications) in [(false, 0), (true, 1)] {
        let cold = if legacy {
            db.spawn_legacy(quiet).await
        } else {
            db.spawn_cold(quiet).await
        };
        let before = cost(&cold);
        for r in validate_concurrently(&cold, 50, &cold.platform, &value).await {
            assert_valid(&r.unwrap(), &id);
        }
        assert_eq!(
            cost_since(&cold, before),
            Cost {
                statements: 1,
                verifications
            },
            "50 concurrent cold Validates of one value (legacy: {legacy})"
        );

        let before = cost(&cold);
        for r in validate_concurrently(&cold, 20, &cold.platform, &wrong).await {
            assert_unknown(&r.unwrap());
        }
        assert_eq!(
            cost_since(&cold, before),
            Cost {
                statements: 1,
                verifications
            },
            "20 concurrent cold Validates of one wrong value (legacy: {legacy})"
        );
    }
}

// ---------------------------------------------------------------------------
// 6. Eviction
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_cache_stays_bounded_and_evicted_tokens_still_validate() {
    const CAPACITY: usize = 50;
    let app = spawn_app_with(|c| {
        quiet(c);
        c.cache_capacity = CAPACITY;
        c.max_tokens_per_owner = 1000;
    })
    .await;
    let (_, validator) = app.token_for("acme", "gateway", &["tokens:validate"]).await;
    let mut tokens = Vec::new();
    for chunk in 0..10 {
        tokens.extend(issue_many(&app, "alice", &["billing:read"], 50).await);
        let len = app.manager.validator().cache().len();
        assert!(
            len <= CAPACITY + CAPACITY / 10,
            "after {} issued tokens the cache holds {len} entries",
            (chunk + 1) * 50
        );
    }
    assert_eq!(tokens.len(), 500);

    let client = app.api.clone();
    let before = cost(&app);
    // At most ~CAPACITY of them can still be cached: the others validate
    // through a miss.
    for (id, value) in &tokens {
        let r = client
            .check(&validator, value, &["billing:read"])
            .await
            .unwrap();
        assert_valid(&r, id);
    }
    let spent = cost_since(&app, before);
    assert!(
        spent.statements >= (500 - CAPACITY - CAPACITY / 10) as u64,
        "500 tokens through a cache of {CAPACITY}: only {spent:?} misses"
    );
    assert_eq!(spent.verifications, 0, "misses are settled by verifiers");
    let len = app.manager.validator().cache().len();
    assert!(len <= CAPACITY + CAPACITY / 10, "cache holds {len} entries");
    // And wrong values for evicted tokens are still rejected.
    let r = client
        .check(&validator, &wrong_value_for(&tokens[1].0), &[])
        .await
        .unwrap();
    assert_unknown(&r);
}

// ---------------------------------------------------------------------------
// 7. Last-used batching
// ---------------------------------------------------------------------------

/// Returns just after a flush: validates `marker` (a hit, and a token not yet
/// recorded) so something is pending, then waits for the flush to write it.
async fn align_to_flush(app: &TestApp, caller: &str, marker: &str) {
    let client = app.api.clone();
    let statements = app.store.statements_executed();
    client.check(caller, marker, &[]).await.unwrap();
    assert!(app.services_usage.pending() > 0);
    // Drained, and its one statement done (nothing else runs meanwhile).
    poll_until("a last-used flush", Duration::from_secs(3), || {
        app.services_usage.pending() == 0 && app.store.statements_executed() > statements
    })
    .await;
}

#[tokio::test]
async fn last_used_is_written_in_one_batch_per_flush_interval() {
    let app = spawn_app_with(|c| c.last_used_flush_interval = Duration::from_secs(1)).await;
    let (_, validator) = app.token_for("acme", "gateway", &["tokens:validate"]).await;
    let (_, marker) = app.token_for("acme", "marker", &[]).await;
    let (id, value) = app.token_for("acme", "alice", &[]).await;
    let batch = issue_many(&app, "bob", &[], 20).await;
    let client = app.api.clone();

    align_to_flush(&app, &validator, &marker).await;
    let window = Instant::now();
    let t0 = Utc::now();
    assert_valid(&client.check(&validator, &value, &[]).await.unwrap(), &id);
    let t1 = Utc::now();
    assert_eq!(
        last_used(&app, &app.platform, &id).await,
        None,
        "last_used_at must not be written on the request path"
    );
    for (id, value) in &batch {
        assert_valid(&client.check(&validator, value, &[]).await.unwrap(), id);
    }
    assert!(
        app.services_usage.pending() >= 21,
        "pending: {}",
        app.services_usage.pending()
    );
    assert!(
        window.elapsed() < Duration::from_millis(800),
        "too slow to stay within one flush interval"
    );
    let statements = app.store.statements_executed();
    poll_until("the flush to drain", Duration::from_secs(3), || {
        app.services_usage.pending() == 0
    })
    .await;
    poll_until("the flush statement", Duration::from_secs(3), || {
        app.store.statements_executed() > statements
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        app.store.statements_executed() - statements,
        1,
        "21 pending last-used times are written by one statement"
    );

    let at = last_used(&app, &app.platform, &id)
        .await
        .expect("last_used_at after the flush");
    assert_between(at, t0, t1);
    for (id, _) in &batch {
        let at = last_used(&app, &app.platform, id).await;
        assert!(at.is_some_and(|at| at >= t0), "{id}: {at:?}");
    }
}

#[tokio::test]
async fn graceful_shutdown_flushes_pending_last_used_times() {
    let db = SharedDb::new();
    let app = db.spawn(quiet).await;
    let (validator_id, validator) = app.token_for("acme", "gateway", &["tokens:validate"]).await;
    let (id, value) = app.token_for("acme", "alice", &[]).await;
    let client = app.api.clone();
    let t0 = Utc::now();
    assert_valid(&client.check(&validator, &value, &[]).await.unwrap(), &id);
    let t1 = Utc::now();
    assert_eq!(last_used(&app, &app.platform, &id).await, None);
    assert!(app.services_usage.pending() >= 2);
    drop(client);
    app.stop().await;

    let restarted = db.spawn(quiet).await;
    let at = last_used(&restarted, &restarted.platform, &id)
        .await
        .expect("last_used_at written at shutdown");
    assert_between(at, t0, t1);
    // The caller credential's use was flushed too.
    let at = last_used(&restarted, &restarted.platform, &validator_id)
        .await
        .expect("caller's last_used_at written at shutdown");
    assert!(at <= t1 + chrono::Duration::milliseconds(1));
}

/// Several instances flush the same token: an older time flushed later never
/// overwrites a newer one.
#[tokio::test]
async fn a_late_flush_of_an_older_use_does_not_move_last_used_back() {
    let db = SharedDb::new();
    let slow = db.spawn(quiet).await;
    let (id, value) = slow.token_for("acme", "alice", &[]).await;
    let on_slow = slow.api.clone();
    assert_valid(
        &on_slow.check(&slow.platform, &value, &[]).await.unwrap(),
        &id,
    );
    let older = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let fast = db.spawn(|_| {}).await; // flushes every 100 ms
    let on_fast = fast.api.clone();
    let t0 = Utc::now();
    assert_valid(
        &on_fast.check(&fast.platform, &value, &[]).await.unwrap(),
        &id,
    );
    let t1 = Utc::now();
    let deadline = Instant::now() + Duration::from_secs(2);
    let newer = loop {
        if let Some(at) = last_used(&fast, &fast.platform, &id).await {
            break at;
        }
        assert!(Instant::now() < deadline, "the fast instance never flushed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_between(newer, t0, t1);
    assert!(newer > older);

    assert!(slow.services_usage.pending() >= 1);
    drop(on_slow);
    slow.stop().await; // flushes its older time
    assert_eq!(last_used(&fast, &fast.platform, &id).await, Some(newer));
}

/// Waits several flush intervals (100 ms in tests), then reads last_used_at.
async fn last_used_after_flushes(app: &TestApp, id: &str) -> Option<DateTime<Utc>> {
    tokio::time::sleep(Duration::from_millis(350)).await;
    last_used(app, &app.platform, id).await
}

/// Search by value checks the secret through the Validate core, but finding a
/// token is not a use of it (an operator searching for a leaked value must not
/// make it look recently used).
#[tokio::test]
async fn searching_by_value_is_not_a_use_of_the_token() {
    let app = spawn_app_with(|_| {}).await;
    let (id, value) = app.token_for("acme", "alice", &[]).await;
    let found = app
        .search(
            &app.platform,
            pb::SearchRequest {
                query: value,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(found.tokens.len(), 1);
    assert_eq!(found.tokens[0].id, id);
    assert_eq!(found.tokens[0].last_used_at, None);
    assert_eq!(last_used_after_flushes(&app, &id).await, None);
}

/// Revoke by value is proof of possession, not a use of the token.
#[tokio::test]
async fn revoking_by_value_is_not_a_use_of_the_token() {
    let app = spawn_app_with(|_| {}).await;
    let (id, value) = app.token_for("acme", "alice", &[]).await;
    let revoked = app.revoke_value(&app.platform, &value, "").await.unwrap();
    assert_eq!(revoked.id, id);
    assert_eq!(revoked.state(), pb::State::Revoked);
    assert_eq!(last_used_after_flushes(&app, &id).await, None);
}

// ---------------------------------------------------------------------------
// 8. Coherence under concurrent load
// ---------------------------------------------------------------------------

struct Sample {
    /// The request was sent after the mutation had returned.
    after: bool,
    result: Result<pb::ValidateResponse, Status>,
}

/// Validates `token` in a loop from several tasks while `mutation` runs, and
/// records for each Validate whether it started after `mutation` returned.
async fn hammer_during(
    app: &TestApp,
    caller: &str,
    token: &str,
    required: &[&str],
    mutation: impl Future<Output = ()>,
) -> Vec<Sample> {
    let after = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let client = app.api.clone();
        let (after, stop) = (Arc::clone(&after), Arc::clone(&stop));
        let (caller, token) = (caller.to_owned(), token.to_owned());
        let required: Vec<String> = required.iter().map(|m| (*m).to_owned()).collect();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let started_after = after.load(Ordering::SeqCst);
                let required: Vec<&str> = required.iter().map(String::as_str).collect();
                let result = client.check(&caller, &token, &required).await;
                samples.push(Sample {
                    after: started_after,
                    result,
                });
            }
            samples
        }));
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    mutation.await;
    after.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(120)).await;
    stop.store(true, Ordering::SeqCst);
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }
    samples
}

/// Before the mutation the token was valid; every Validate started after it
/// returned answers `expected`.
fn assert_switched(samples: &[Sample], expected: pb::Reason) {
    let before: Vec<_> = samples.iter().filter(|s| !s.after).collect();
    let after: Vec<_> = samples.iter().filter(|s| s.after).collect();
    assert!(
        before
            .iter()
            .any(|s| s.result.as_ref().is_ok_and(|r| r.valid)),
        "the hammer never saw the token valid before the mutation"
    );
    assert!(
        after.len() >= 10,
        "only {} Validates ran after the mutation",
        after.len()
    );
    for s in &after {
        let r = s.result.as_ref().unwrap_or_else(|e| {
            panic!("Validate started after the mutation failed: {e:?}");
        });
        assert!(
            !r.valid && r.reason() == expected,
            "Validate started after the mutation returned answered {:?} (valid={}), expected {expected:?}",
            r.reason(),
            r.valid
        );
    }
}

#[tokio::test]
async fn no_validate_started_after_set_state_disabled_sees_the_token_valid() {
    let app = spawn_app_with(quiet).await;
    let (_, validator) = app.token_for("acme", "gateway", &["tokens:validate"]).await;
    let (id, value) = app.token_for("acme", "alice", &[]).await;
    let client = app.api.clone();
    let samples = hammer_during(&app, &validator, &value, &[], async {
        client
            .change_state(&app.platform, &id, pb::State::Disabled, "incident")
            .await
            .unwrap();
    })
    .await;
    assert_switched(&samples, pb::Reason::Disabled);
}

#[tokio::test]
async fn no_validate_started_after_revoke_sees_the_token_valid() {
    let app = spawn_app_with(quiet).await;
    let (_, validator) = app.token_for("acme", "gateway", &["tokens:validate"]).await;
    let (id, value) = app.token_for("acme", "alice", &[]).await;
    let client = app.api.clone();
    let samples = hammer_during(&app, &validator, &value, &[], async {
        client
            .revoke_id(&app.platform, &id, "leaked")
            .await
            .unwrap();
    })
    .await;
    assert_switched(&samples, pb::Reason::Revoked);
}

#[tokio::test]
async fn no_validate_started_after_rotate_accepts_the_old_value() {
    let app = spawn_app_with(quiet).await;
    let (_, validator) = app.token_for("acme", "gateway", &["tokens:validate"]).await;
    let (id, value) = app.token_for("acme", "alice", &[]).await;
    let client = app.api.clone();
    let mut new_value = String::new();
    let samples = hammer_during(&app, &validator, &value, &[], async {
        new_value = client
            .rotate(
                &app.platform,
                pb::RotateRequest {
                    id: id.clone(),
                    grace_period: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 0,
                    }),
                },
            )
            .await
            .unwrap()
            .secret;
    })
    .await;
    assert_switched(&samples, pb::Reason::Unknown);
    assert_valid(
        &client.check(&validator, &new_value, &[]).await.unwrap(),
        &id,
    );
}

#[tokio::test]
async fn no_validate_started_after_update_sees_a_removed_module() {
    let app = spawn_app_with(quiet).await;
    let (_, validator) = app.token_for("acme", "gateway", &["tokens:validate"]).await;
    let (id, value) = app
        .token_for("acme", "alice", &["billing:read", "billing:write"])
        .await;
    let client = app.api.clone();
    let samples = hammer_during(&app, &validator, &value, &["billing:write"], async {
        client
            .update(
                &app.platform,
                pb::UpdateRequest {
                    id: id.clone(),
                    modules: vec!["billing:read".into()],
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["modules".into()],
                    }),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    })
    .await;
    assert_switched(&samples, pb::Reason::MissingModules);
}

#[tokio::test]
async fn no_rpc_started_after_its_credential_was_disabled_is_served() {
    let app = spawn_app_with(quiet).await;
    let (validator_id, validator) = app.token_for("acme", "gateway", &["tokens:validate"]).await;
    let (_, value) = app.token_for("acme", "alice", &[]).await;
    let client = app.api.clone();
    let samples = hammer_during(&app, &validator, &value, &[], async {
        client
            .change_state(&app.platform, &validator_id, pb::State::Disabled, "")
            .await
            .unwrap();
    })
    .await;
    assert!(
        samples
            .iter()
            .any(|s| !s.after && s.result.as_ref().is_ok_and(|r| r.valid))
    );
    let after: Vec<_> = samples.iter().filter(|s| s.after).collect();
    assert!(
        after.len() >= 10,
        "only {} RPCs after the mutation",
        after.len()
    );
    for s in after {
        match &s.result {
            Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{status:?}"),
            Ok(r) => panic!("an RPC started after its credential was disabled was served: {r:?}"),
        }
    }
}

/// The previous value verified during a rotate grace is cached as such: a hit
/// while the grace runs, UNKNOWN as soon as it ends, on a warm and a cold instance.
#[tokio::test]
async fn the_previous_value_is_a_hit_during_the_grace_and_unknown_after_it() {
    let db = SharedDb::new();
    let warm = db.spawn(quiet).await;
    let (id, old) = warm.token_for("acme", "alice", &[]).await;
    let on_warm = warm.api.clone();
    assert_valid(
        &on_warm.check(&warm.platform, &old, &[]).await.unwrap(),
        &id,
    );
    let rotated = on_warm
        .rotate(
            &warm.platform,
            pb::RotateRequest {
                id: id.clone(),
                grace_period: Some(prost_types::Duration {
                    seconds: 3,
                    nanos: 0,
                }),
            },
        )
        .await
        .unwrap();
    let grace_end = to_utc(&rotated.token.unwrap().previous_secret_expires_at.unwrap());
    let new = rotated.secret;

    let before = cost(&warm);
    for value in [&old, &new, &old] {
        assert_valid(
            &on_warm.check(&warm.platform, value, &[]).await.unwrap(),
            &id,
        );
    }
    assert_eq!(
        cost_since(&warm, before),
        FREE,
        "both values are hits during the grace"
    );

    // A cold instance with the tokens' key: the stored verifiers settle it.
    let same_key = db.spawn_cold(quiet).await;
    let on_same_key = same_key.api.clone();
    let before = cost(&same_key);
    assert_valid(
        &on_same_key
            .check(&same_key.platform, &old, &[])
            .await
            .unwrap(),
        &id,
    );
    assert_eq!(
        cost_since(&same_key, before),
        Cost {
            statements: 1,
            verifications: 0
        },
        "the old value matches the previous verifier"
    );

    // One without their key: the old value needs both hashes once, then is a hit.
    let cold = db.spawn_legacy(quiet).await;
    let on_cold = cold.api.clone();
    let before = cost(&cold);
    assert_valid(
        &on_cold.check(&cold.platform, &old, &[]).await.unwrap(),
        &id,
    );
    assert_eq!(
        cost_since(&cold, before),
        Cost {
            statements: 1,
            verifications: 2
        },
        "the old value is checked against the current hash, then the previous one"
    );
    let before = cost(&cold);
    assert_valid(
        &on_cold.check(&cold.platform, &old, &[]).await.unwrap(),
        &id,
    );
    assert_eq!(cost_since(&cold, before), FREE);
    assert!(Utc::now() < grace_end, "test too slow for its grace period");

    let wait = (grace_end - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
    for (app, client) in [
        (&warm, &on_warm),
        (&cold, &on_cold),
        (&same_key, &on_same_key),
    ] {
        assert_unknown(&client.check(&app.platform, &old, &[]).await.unwrap());
        assert_valid(&client.check(&app.platform, &new, &[]).await.unwrap(), &id);
    }
}

/// A miss that read the token before a mutation committed and finishes its
/// (slow) argon2 after the mutation returned must not cache the old state.
#[tokio::test]
async fn a_cold_miss_racing_set_state_never_caches_the_old_state() {
    let db = SharedDb::new();
    // Hashes that take a while to verify, so the miss spans the mutation.
    let first = db
        .spawn(|c| {
            quiet(c);
            c.argon2_memory_kib = 8192;
            c.argon2_iterations = 2;
        })
        .await;
    let tokens = issue_many(&first, "alice", &[], 12).await;
    let cold = db.spawn_legacy(quiet).await;
    for (id, value) in &tokens {
        let racer = cold.api.clone();
        let (platform, racing_value) = (cold.platform.clone(), value.clone());
        let miss = tokio::spawn(async move { racer.check(&platform, &racing_value, &[]).await });
        tokio::time::sleep(Duration::from_millis(1)).await;
        cold.change_state(&cold.platform, id, pb::State::Disabled, "")
            .await
            .unwrap();
        for _ in 0..2 {
            let r = cold.check(&cold.platform, value, &[]).await.unwrap();
            assert!(!r.valid, "{id} valid after SetState(disabled) returned");
            assert_eq!(r.reason(), pb::Reason::Disabled);
        }
        // The racing Validate started before SetState returned: either answer is fine.
        let raced = miss.await.unwrap().unwrap();
        assert!(matches!(
            raced.reason(),
            pb::Reason::Valid | pb::Reason::Disabled
        ));
        let r = cold.check(&cold.platform, value, &[]).await.unwrap();
        assert_eq!(r.reason(), pb::Reason::Disabled, "{id}");
    }
}

// ---------------------------------------------------------------------------
// 9. The argon2 pool is bounded
// ---------------------------------------------------------------------------

fn expensive_argon2(c: &mut Config) {
    quiet(c);
    c.argon2_memory_kib = 65536;
    c.argon2_iterations = 3;
}

#[tokio::test]
async fn a_burst_of_cold_misses_is_refused_at_once_beyond_the_argon2_queue() {
    const N: usize = 8;
    let db = SharedDb::new();
    let first = db.spawn(expensive_argon2).await;
    let tokens = issue_many(&first, "alice", &[], N).await;
    drop(first);
    let cold = db
        .spawn_legacy(|c| {
            expensive_argon2(c);
            c.hash_workers = 1;
            c.hash_queue = 1;
        })
        .await;

    let start = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for (id, value) in tokens {
        let client = cold.api.clone();
        let (platform, start) = (cold.platform.clone(), Arc::clone(&start));
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let sent = Instant::now();
            let r = client.check(&platform, &value, &[]).await;
            (id, r, sent.elapsed())
        }));
    }
    let before = verifications(&cold);
    let (mut valid, mut busy) = (Vec::new(), Vec::new());
    for t in tasks {
        let (id, r, took) = t.await.unwrap();
        match r {
            Ok(r) => {
                assert_valid(&r, &id);
                valid.push(took);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                busy.push(took);
            }
        }
    }
    assert!(
        busy.len() >= N - 3,
        "{N} concurrent misses on 1 worker + a queue of 1: only {} refused",
        busy.len()
    );
    assert!(!valid.is_empty(), "at least one miss must be verified");
    assert_eq!(
        verifications(&cold) - before,
        valid.len() as u64,
        "refused Validates must not run argon2"
    );
    let slowest_refusal = busy.iter().max().unwrap();
    let fastest_verified = valid.iter().min().unwrap();
    assert!(
        slowest_refusal < fastest_verified,
        "refusals must come back at once (slowest {slowest_refusal:?}), not after waiting for \
         the pool (fastest verified {fastest_verified:?})"
    );
}

// ---------------------------------------------------------------------------
// 10. Replicas (PostgreSQL)
// ---------------------------------------------------------------------------

/// Polls Validate on `app` until it answers `expected`, for at most `within`.
async fn eventually(
    app: &TestApp,
    client: &Api,
    token: &str,
    required: &[&str],
    expected: pb::Reason,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let r = client.check(&app.platform, token, required).await.unwrap();
        if r.reason() == expected {
            assert_eq!(r.valid, expected == pb::Reason::Valid);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{within:?} after the change returned on replica 1, replica 2 still answers {:?} \
             (valid={}), expected {expected:?}",
            r.reason(),
            r.valid
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// deploy/README.md: with PostgreSQL each replica polls the change log every
/// TOKEND_CHANGE_POLL_INTERVAL (500 ms), bounding how long another replica's
/// cache can lag behind a change (NOTIFY usually delivers it at once).
#[tokio::test]
async fn a_change_on_one_replica_reaches_the_other_replicas_cache() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) =
        helpers::fresh_pg_database("a_change_on_one_replica_reaches_the_other_replicas_cache")
            .await
    else {
        return;
    };
    let mut config = helpers::test_config(url);
    quiet(&mut config);
    let one = helpers::start(config.clone(), None).await;
    let two = helpers::start(config, None).await;
    let lag = Duration::from_millis(1500);
    let (id, value) = one
        .token_for("acme", "alice", &["billing:read", "billing:write"])
        .await;
    let on_one = one.api.clone();
    let on_two = two.api.clone();
    // Replica 2 verifies the value once and caches it.
    assert_valid(
        &on_two.check(&two.platform, &value, &[]).await.unwrap(),
        &id,
    );
    let verified_on_two = verifications(&two);

    // Disable: replica 2 refreshes the snapshot and keeps the verified digest.
    on_one
        .change_state(&one.platform, &id, pb::State::Disabled, "")
        .await
        .unwrap();
    eventually(&two, &on_two, &value, &[], pb::Reason::Disabled, lag).await;
    on_one
        .change_state(&one.platform, &id, pb::State::Active, "")
        .await
        .unwrap();
    eventually(&two, &on_two, &value, &[], pb::Reason::Valid, lag).await;
    assert_eq!(
        verifications(&two),
        verified_on_two,
        "a remote disable/enable must not cost argon2 on replica 2"
    );

    // Update removing a module.
    on_one
        .update(
            &one.platform,
            pb::UpdateRequest {
                id: id.clone(),
                modules: vec!["billing:read".into()],
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["modules".into()],
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    eventually(
        &two,
        &on_two,
        &value,
        &["billing:write"],
        pb::Reason::MissingModules,
        lag,
    )
    .await;

    // Rotate without grace: the old value dies on replica 2 too.
    let rotated = on_one
        .rotate(
            &one.platform,
            pb::RotateRequest {
                id: id.clone(),
                grace_period: None,
            },
        )
        .await
        .unwrap()
        .secret;
    eventually(&two, &on_two, &value, &[], pb::Reason::Unknown, lag).await;
    assert_valid(
        &on_two.check(&two.platform, &rotated, &[]).await.unwrap(),
        &id,
    );

    // Revoke.
    on_one
        .revoke_id(&one.platform, &id, "leaked")
        .await
        .unwrap();
    eventually(&two, &on_two, &rotated, &[], pb::Reason::Revoked, lag).await;
}
