//! Validate stays hot through restarts, upgrades, key rotations and new
//! replicas: the keyed verifier stored beside each argon2id hash settles a
//! token without argon2, and the warm start loads the cache before SERVING.

use std::{collections::BTreeMap, path::Path, time::Duration};

use sea_orm::sqlx::{self, AssertSqlSafe, Connection, SqliteConnection};
use tokend::{
    config::Config,
    domain::TokenId,
    pb::{self},
    startup::Application,
    validation::verifier::Keyring,
};

use crate::helpers::verifications;
use crate::{
    helpers::{self, SharedDb, TestApp, captured_logs, id_of},
    postgres::{exec, query_strings, sql_conn},
};

/// Validates every value concurrently (64 in flight), in order of `values`.
async fn validate_all(app: &TestApp, caller: &str, values: &[String]) -> Vec<pb::Reason> {
    let mut out = Vec::new();
    for chunk in values.chunks(64) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|v| {
                let (client, caller, v) = (app.api.clone(), caller.to_owned(), v.clone());
                tokio::spawn(async move {
                    client
                        .check(&caller, &v, &[])
                        .await
                        .expect("Validate")
                        .reason()
                })
            })
            .collect();
        for t in tasks {
            out.push(t.await.unwrap());
        }
    }
    out
}

async fn issue(app: &TestApp, owner: &str, name: &str) -> (String, String) {
    app.issued(
        &app.platform,
        pb::IssueRequest {
            owner_id: owner.into(),
            name: name.into(),
            modules: vec!["billing:read".into()],
            ..Default::default()
        },
    )
    .await
}

async fn sqlite(db: &SharedDb) -> SqliteConnection {
    SqliteConnection::connect(&db.url).await.unwrap()
}

async fn sqlite_exec(db: &SharedDb, sql: &str) {
    let mut conn = sqlite(db).await;
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn key_id_of(db: &SharedDb, id: &str) -> Option<String> {
    let mut conn = sqlite(db).await;
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT verifier_key_id FROM tokens WHERE id = '{id}'"
    )))
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

fn current_key_id(path: &Path) -> String {
    Keyring::parse(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .current_id()
        .to_owned()
}

#[tokio::test]
async fn a_restart_keeps_every_token_valid_without_argon2() {
    let db = SharedDb::new();
    let first = db.spawn(|_| {}).await;
    let mut values = Vec::new();
    let mut expected = Vec::new();
    for i in 0..40 {
        values.push(
            issue(&first, &format!("user-{i}"), &format!("t{i}"))
                .await
                .1,
        );
        expected.push(pb::Reason::Valid);
    }
    let client = first.api.clone();
    // One disabled, one rotated with a grace period (both values valid).
    client
        .change_state(&first.platform, &id_of(&values[0]), pb::State::Disabled, "")
        .await
        .unwrap();
    expected[0] = pb::Reason::Disabled;
    let rotated = client
        .rotate(
            &first.platform,
            pb::RotateRequest {
                id: id_of(&values[1]),
                grace_period: Some(prost_types::Duration {
                    seconds: 600,
                    nanos: 0,
                }),
            },
        )
        .await
        .unwrap();
    values.push(rotated.secret);
    expected.push(pb::Reason::Valid);
    let (_, gateway) = first
        .token_for("acme", "gateway", &["tokens:validate"])
        .await;
    first.stop().await;

    for warm in [true, false] {
        let app = db
            .spawn(|c| {
                c.warm_start = warm;
                c.last_used_flush_interval = Duration::from_secs(3600);
            })
            .await;
        let statements = app.store.statements_executed();
        assert_eq!(validate_all(&app, &gateway, &values).await, expected);
        assert_eq!(
            verifications(&app),
            0,
            "a restarted server (warm start {warm}) validates without argon2"
        );
        if warm {
            assert_eq!(
                app.store.statements_executed(),
                statements,
                "after a warm start every Validate (and the caller) is a hit"
            );
        }
        app.stop().await;
    }
}

/// After a restart without a warm start, every first Validate is a miss;
/// misses that overlap are read from the store together, not one query each.
#[tokio::test]
async fn concurrent_misses_after_a_restart_share_store_reads() {
    const TOKENS: usize = 192;
    let db = SharedDb::new();
    let first = db.spawn(|_| {}).await;
    let mut values = Vec::new();
    for i in 0..TOKENS {
        values.push(issue(&first, &format!("user-{i}"), "t").await.1);
    }
    // One unknown id among them: answered UNKNOWN, not mixed up with a row.
    let unknown = tokend::domain::TokenValue::generate("tk")
        .unwrap()
        .expose()
        .to_string();
    let (_, gateway) = first
        .token_for("acme", "gateway", &["tokens:validate"])
        .await;
    first.stop().await;

    let app = db
        .spawn_cold(|c| c.last_used_flush_interval = Duration::from_secs(3600))
        .await;
    // The caller's own credential is a miss too: read it first.
    assert_eq!(
        validate_all(&app, &gateway, &values[..1]).await,
        [pb::Reason::Valid]
    );
    let before = app.store.statements_executed();
    let mut presented = values[1..].to_vec();
    presented.push(unknown);
    let reasons = validate_all(&app, &gateway, &presented).await;
    let reads = app.store.statements_executed() - before;
    let mut expected = vec![pb::Reason::Valid; TOKENS - 1];
    expected.push(pb::Reason::Unknown);
    assert_eq!(reasons, expected);
    assert_eq!(verifications(&app), 0, "no argon2 after a restart");
    assert!(
        reads * 4 <= presented.len() as u64,
        "{reads} store statements for {} concurrent misses: they were not read together",
        presented.len()
    );
    app.stop().await;
}

#[tokio::test]
async fn the_sqlite_key_file_is_created_private_once_and_reused() {
    let db = SharedDb::new();
    let key = db.path().join("tokend.key");
    assert!(!key.exists());
    let first = db.spawn(|_| {}).await;
    let (_, value) = issue(&first, "alice", "kept").await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key file must be private");
    }
    let text = std::fs::read_to_string(&key).unwrap();
    // The log says where the key is, never what it is.
    let logs = captured_logs();
    assert!(
        logs.contains(&key.display().to_string()),
        "the path is logged"
    );
    first.stop().await;

    let again = db.spawn_cold(|_| {}).await;
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        text,
        "never overwritten"
    );
    let client = again.api.clone();
    assert!(
        client
            .check(&again.platform, &value, &[])
            .await
            .expect("Validate")
            .valid
    );
    assert_eq!(
        verifications(&again),
        0,
        "the same key verifies the same rows"
    );
}

/// The fixture was written by the release before verifiers (see its README).
#[tokio::test]
async fn a_store_from_the_previous_release_upgrades_and_its_tokens_validate() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v0.1-sqlite");
    let values: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("values.json")).unwrap())
            .unwrap();
    let db = SharedDb::new();
    std::fs::copy(fixture.join("tokend.db"), db.path().join("tokend.db")).unwrap();
    let gateway = &values["validator"];

    // When the rotated token's grace ends (2026-12-07), its old value stops.
    let app = db.spawn(|_| {}).await;
    let rotated_id = TokenId::parse(&id_of(&values["rotated_current"])).unwrap();
    let grace_running = app
        .store
        .find_token(rotated_id)
        .await
        .unwrap()
        .unwrap()
        .live_previous_secret(chrono::Utc::now())
        .is_some();
    let cases: Vec<(&str, pb::Reason)> = vec![
        ("active", pb::Reason::Valid),
        ("disabled", pb::Reason::Disabled),
        ("revoked", pb::Reason::Revoked),
        ("rotated_current", pb::Reason::Valid),
        (
            "rotated_previous",
            if grace_running {
                pb::Reason::Valid
            } else {
                pb::Reason::Unknown
            },
        ),
    ];
    let client = app.api.clone();
    let r = client
        .check(gateway, &values["active"], &[])
        .await
        .expect("Validate");
    assert!(r.valid, "{r:?}");
    assert_eq!(r.modules, vec!["billing:read".to_owned()]);
    assert_eq!(r.api_version, "2024-06-01");
    assert_eq!(r.metadata.get("team").map(String::as_str), Some("payments"));
    for (name, reason) in &cases {
        let r = client
            .check(gateway, &values[*name], &[])
            .await
            .expect("Validate");
        assert_eq!(r.reason(), *reason, "{name}");
    }
    let paid = verifications(&app);
    assert!(
        (5..=6).contains(&paid),
        "each old token pays argon2 once on its first use: {paid}"
    );
    for (name, reason) in &cases {
        assert_eq!(
            client
                .check(gateway, &values[*name], &[])
                .await
                .expect("Validate")
                .reason(),
            *reason,
            "{name} again"
        );
    }
    assert_eq!(verifications(&app), paid, "then hits");
    app.stop().await; // writes the verifiers behind

    for warm in [true, false] {
        let app = db.spawn(|c| c.warm_start = warm).await;
        let client = app.api.clone();
        for (name, reason) in &cases {
            let r = client
                .check(gateway, &values[*name], &[])
                .await
                .expect("Validate");
            assert_eq!(r.reason(), *reason, "{name} after the upgrade");
        }
        assert_eq!(
            verifications(&app),
            0,
            "healed: no argon2 after a restart (warm start {warm})"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_key_rotation_needs_no_argon2_while_the_old_key_is_listed() {
    let db = SharedDb::new();
    let (a, b) = (Keyring::generate_line(), Keyring::generate_line());
    let only_a = db.key_file("a.key", &[&a]);
    let b_then_a = db.key_file("b-a.key", &[&b, &a]);
    let only_b = db.key_file("b.key", &[&b]);
    let (a_id, b_id) = (current_key_id(&only_a), current_key_id(&only_b));

    let first = db
        .spawn(|c| c.verifier_key_file = Some(only_a.clone()))
        .await;
    let (used_id, used) = issue(&first, "alice", "used during the rotation").await;
    let (idle_id, idle) = issue(&first, "bob", "idle during the rotation").await;
    let (_, gateway) = first
        .token_for("acme", "gateway", &["tokens:validate"])
        .await;
    first.stop().await;
    assert_eq!(
        key_id_of(&db, &used_id).await.as_deref(),
        Some(a_id.as_str())
    );

    // New current key, old one still listed: no argon2, and rows are re-keyed.
    let rotating = db
        .spawn(|c| c.verifier_key_file = Some(b_then_a.clone()))
        .await;
    let client = rotating.api.clone();
    for _ in 0..3 {
        assert!(
            client
                .check(&gateway, &used, &[])
                .await
                .expect("Validate")
                .valid
        );
    }
    assert_eq!(verifications(&rotating), 0, "old key listed: no argon2");
    rotating.stop().await;
    assert_eq!(
        key_id_of(&db, &used_id).await.as_deref(),
        Some(b_id.as_str())
    );
    assert_eq!(
        key_id_of(&db, &idle_id).await.as_deref(),
        Some(a_id.as_str()),
        "only tokens in use are rewritten"
    );

    // Old key dropped: the re-keyed token needs nothing; the idle one pays
    // argon2 once, then heals.
    let dropped = db
        .spawn_cold(|c| c.verifier_key_file = Some(only_b.clone()))
        .await;
    let client = dropped.api.clone();
    // The gateway's own credential was used during the rotation: re-keyed.
    assert!(
        client
            .check(&gateway, &used, &[])
            .await
            .expect("Validate")
            .valid
    );
    assert_eq!(verifications(&dropped), 0);
    assert!(
        client
            .check(&gateway, &idle, &[])
            .await
            .expect("Validate")
            .valid
    );
    assert_eq!(verifications(&dropped), 1, "argon2 once for the idle token");
    dropped.stop().await;
    assert_eq!(
        key_id_of(&db, &idle_id).await.as_deref(),
        Some(b_id.as_str())
    );
    let healed = db
        .spawn_cold(|c| c.verifier_key_file = Some(only_b.clone()))
        .await;
    let client = healed.api.clone();
    assert!(
        client
            .check(&gateway, &idle, &[])
            .await
            .expect("Validate")
            .valid
    );
    assert_eq!(verifications(&healed), 0, "healed");
    healed.stop().await;

    // `tokend key-status` tells the operator what is left under each key.
    let status = key_status(&db, &b_then_a);
    assert!(
        status.contains(&format!("key {b_id} (current): ")),
        "{status}"
    );
    // Left under the old key: the first instance's own bootstrap token,
    // never used since.
    assert!(
        status.contains(&format!("key {a_id} (older): 1 live tokens")),
        "{status}"
    );
    assert!(
        status.contains("no verifier yet: 0 live tokens"),
        "{status}"
    );
}

/// Runs the real `tokend key-status` on `db` with `key_file`.
fn key_status(db: &SharedDb, key_file: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .arg("key-status")
        .env("TOKEND_DATABASE_URL", &db.url)
        .env("TOKEND_VERIFIER_KEY_FILE", key_file)
        .env("TOKEND_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn keygen_prints_a_usable_key_line_and_nothing_else() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .arg("keygen")
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let ring = Keyring::parse(&line).unwrap();
    assert_eq!(line.trim().split(':').next(), Some(ring.current_id()));
    assert_eq!(line.lines().count(), 1);
}

/// Tokens imported straight into the store (a seed, a data import) carry
/// their audit events and owners' counts, and validate by their verifiers.
#[tokio::test]
async fn imported_tokens_validate_with_their_events_and_quotas() {
    use tokend::domain::{OwnerId, Token, TokenState, TokenValue, token::Actor};
    let db = SharedDb::new();
    let first = db.spawn(|_| {}).await;
    let keyring = first.manager.validator().cache().keyring();
    let template = first
        .store
        .find_token(TokenId::parse(&id_of(&first.platform)).unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut values = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..3 {
        let value = TokenValue::generate("tk").unwrap();
        tokens.push(Token {
            id: value.id(),
            owner_id: OwnerId::from_stored("imported".into()),
            name: format!("imported {i}"),
            modules: vec!["billing:read".into()],
            state: TokenState::Active,
            verifier: Some(keyring.seal(&value)),
            previous_secret: None,
            hint: value.hint(),
            ..template.clone()
        });
        values.push(value.expose());
    }
    let actor = Actor::Tool {
        name: "import".into(),
        owner_id: "ops".into(),
    };
    first
        .store
        .import_tokens(&tokens, &actor, "test import")
        .await
        .unwrap();
    let client = first.api.clone();
    for v in &values {
        assert!(
            client
                .check(&first.platform, v, &[])
                .await
                .expect("Validate")
                .valid
        );
    }
    assert_eq!(verifications(&first), 0);
    let events = client
        .list_events(
            &first.platform,
            pb::ListEventsRequest {
                token_id: tokens[0].id.to_string(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind(), pb::EventKind::Issued);
    assert_eq!(events[0].detail, "test import");
    // The owner's live-token count includes them: with a limit of 4, one
    // more Issue fits and the next is refused.
    first.stop().await;
    let limited = db.spawn(|c| c.max_tokens_per_owner = 4).await;
    let client = limited.api.clone();
    let issue = |n: &str| pb::IssueRequest {
        owner_id: "imported".into(),
        name: n.into(),
        ..Default::default()
    };
    client
        .issue(&limited.platform, issue("fourth"))
        .await
        .unwrap();
    let err = client
        .issue(&limited.platform, issue("fifth"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
}

#[tokio::test]
async fn a_tampered_stored_verifier_does_not_validate() {
    let db = SharedDb::new();
    let first = db.spawn(|_| {}).await;
    let (a_id, a) = issue(&first, "alice", "a").await;
    let (b_id, b) = issue(&first, "bob", "b").await;
    let (c_id, c) = issue(&first, "carol", "c").await;
    let (_, gateway) = first
        .token_for("acme", "gateway", &["tokens:validate"])
        .await;
    first.stop().await;
    // One bit flipped; another token's verifier copied over; garbage length.
    let mut conn = sqlite(&db).await;
    let mac: Vec<u8> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT verifier FROM tokens WHERE id = '{a_id}'"
    )))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let mut flipped = mac.clone();
    flipped[31] ^= 1;
    sqlx::query("UPDATE tokens SET verifier = ? WHERE id = ?")
        .bind(flipped)
        .bind(&a_id)
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    sqlite_exec(
        &db,
        &format!(
            "UPDATE tokens SET verifier = (SELECT verifier FROM tokens WHERE id = '{c_id}') \
             WHERE id = '{b_id}'"
        ),
    )
    .await;

    for warm in [true, false] {
        let app = db.spawn(|c| c.warm_start = warm).await;
        let client = app.api.clone();
        for (name, value) in [("flipped bit", &a), ("copied verifier", &b)] {
            let r = client.check(&gateway, value, &[]).await.expect("Validate");
            assert!(!r.valid, "{name}: {r:?}");
            assert_eq!(r.reason(), pb::Reason::Unknown, "{name}");
            assert!(r.token_id.is_empty(), "{name}: no token fields");
        }
        assert!(
            client
                .check(&gateway, &c, &[])
                .await
                .expect("Validate")
                .valid
        );
        assert_eq!(verifications(&app), 0, "a known key's verifier is trusted");
        app.stop().await;
    }
}

#[tokio::test]
async fn postgres_without_a_verifier_key_refuses_to_start() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) =
        helpers::fresh_pg_database("postgres_without_a_verifier_key_refuses_to_start").await
    else {
        return;
    };
    let mut config: Config = helpers::test_config(url.clone());
    config.verifier_key_file = None;
    let err = match Application::build(&config).await {
        Ok(_) => panic!("started on PostgreSQL without a verifier key"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("--verifier-key-file"), "{err}");
    assert!(err.contains("TOKEND_VERIFIER_KEY_FILE"), "{err}");
    assert!(err.contains("tokend keygen"), "{err}");

    // The real binary says so and exits non-zero.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .arg("serve")
        .env("TOKEND_DATABASE_URL", &url)
        .env("TOKEND_LISTEN", "127.0.0.1:0")
        .env_remove("TOKEND_VERIFIER_KEY_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tokend keygen"), "{stderr}");
}

/// A replica that starts after the tokens were issued serves them without
/// argon2: warm, every Validate is a hit; cold, each is one store read.
#[tokio::test]
async fn a_replica_started_later_serves_without_argon2() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) =
        helpers::fresh_pg_database("a_replica_started_later_serves_without_argon2").await
    else {
        return;
    };
    let first = helpers::start(helpers::test_config(url.clone()), None).await;
    let mut values = Vec::new();
    for i in 0..30 {
        values.push(issue(&first, &format!("u{i}"), "t").await.1);
    }
    let (_, gateway) = first
        .token_for("acme", "gateway", &["tokens:validate"])
        .await;
    for warm in [true, false] {
        let mut config = helpers::test_config(url.clone());
        config.warm_start = warm;
        config.last_used_flush_interval = Duration::from_secs(3600);
        let later = helpers::start(config, None).await;
        let before = later.store.statements_executed();
        let reasons = validate_all(&later, &gateway, &values).await;
        assert!(
            reasons.iter().all(|r| *r == pb::Reason::Valid),
            "{reasons:?}"
        );
        assert_eq!(verifications(&later), 0, "warm start {warm}: no argon2");
        let statements = later.store.statements_executed() - before;
        if warm {
            assert_eq!(statements, 0, "warm: all hits");
        } else {
            // Misses are read in batches (`validation::misses`): at least
            // one read, at most one per token.
            assert!(
                (1..=31).contains(&statements),
                "cold: the tokens were read from the store ({statements} statements)"
            );
        }
        later.stop().await;
    }
    first.stop().await;
}

/// Revocations that commit while a replica's warm start is loading rows must
/// not be lost: the loaded (stale) rows of those tokens are not cached.
#[tokio::test]
async fn a_warm_start_on_postgres_misses_no_change_committed_during_the_load() {
    const FILLER: usize = 300_000;
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) = helpers::fresh_pg_database(
        "a_warm_start_on_postgres_misses_no_change_committed_during_the_load",
    )
    .await
    else {
        return;
    };
    // This test is about coherence, not latency: the 300,000-row insert and
    // the rest of the suite (SQLite tests fsync on the same disk) can stall a
    // PostgreSQL commit past the default 5 s store timeout on this machine,
    // and a revoke answered UNAVAILABLE would end the test for nothing.
    let config = || tokend::config::Config {
        store_timeout: Duration::from_secs(60),
        // Loading 300,000 rows on a busy machine can outlast the default 30 s,
        // and a partial load would prove nothing here.
        warm_start_timeout: Duration::from_secs(180),
        ..helpers::test_config(url.clone())
    };
    let writer = helpers::start(config(), None).await;
    let mut real = Vec::new();
    for i in 0..40 {
        real.push(issue(&writer, &format!("u{i}"), "real").await);
    }
    let (_, gateway) = writer
        .token_for("acme", "gateway", &["tokens:validate"])
        .await;
    // Filler rows, used more recently than the real tokens, so the load reads
    // them first and the real ones last (their verifiers are random: never
    // validated, only loaded).
    let key_id = current_key_id(&helpers::PG_KEY_FILE.1);
    let mut conn = sql_conn(&url).await;
    exec(
        &mut conn,
        &format!(
            "INSERT INTO tokens (id, account_id, owner_id, created_by, updated_by, name, \
             description, modules, api_version, metadata, state, state_reason, secret_hash, hint, \
             created_at, updated_at, last_used_at, verifier_key_id, verifier) \
             SELECT substr(md5(i::text), 1, 16), 'filler', 'f' || i, 'f', 'f', 'filler', '', \
             '[]', '', '{{}}', 'active', '', '$argon2id$filler', '', now(), now(), now(), \
             '{key_id}', decode(md5(i::text) || md5((i + 1)::text), 'hex') \
             FROM generate_series(1, {FILLER}) AS i"
        ),
    )
    .await;
    let loaded_rows = query_strings(
        &mut conn,
        "SELECT count(*)::text FROM tokens WHERE verifier IS NOT NULL",
    )
    .await;
    assert!(loaded_rows[0].parse::<usize>().unwrap() > FILLER);

    let replica = helpers::start_unready(config(), None).await;
    // Revoke the real tokens one by one while the replica loads.
    let client = writer.api.clone();
    let mut revoked_while_loading = 0;
    for (id, _) in &real {
        client
            .revoke_id(&writer.platform, id, "during the warm start")
            .await
            .unwrap();
        if !replica.health.is_serving() {
            revoked_while_loading += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::timeout(Duration::from_secs(200), replica.health.until_serving())
        .await
        .expect("the replica did not become ready");
    assert!(
        revoked_while_loading > 0,
        "the warm start finished before any revocation: the test proves nothing"
    );
    assert!(
        replica.manager.validator().cache().len() > FILLER / 2,
        "the replica loaded its cache"
    );
    // Coherence settles within a second; every revocation must show.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let values: Vec<String> = real.iter().map(|(_, v)| v.clone()).collect();
    let reasons = validate_all(&replica, &gateway, &values).await;
    assert!(
        reasons.iter().all(|r| *r == pb::Reason::Revoked),
        "{revoked_while_loading} revoked during the load; replica answers {reasons:?}"
    );
    replica.stop().await;
    writer.stop().await;
}
